"""Plan: which source fetch reads (Kaggle, an archive, a folder or synthetic), how, and whether it must.

Nothing under the data dir is written here. A Kaggle source is downloaded into the cache (its archive
is the input the fingerprint hashes); every other input is only checked and listed.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError, opt
from ..download import DEFAULT_DATASET, download_dataset
from ..freshness import inputs_fingerprint, up_to_date
from ..guards import check_inputs_outside
from ..references import reference_fingerprint
from ..sources import SourcePlan, plan_source
from .records import FetchOptions, FetchPlan
from .table import COLUMNS

__all__ = ["plan_fetch"]


def plan_fetch(data_dir: Path, options: FetchOptions) -> FetchPlan:
    """Resolve the options into a `FetchPlan`: the source's kind and place, how to read it, the
    fingerprint, and the data dir's manifest when it already holds this result (`current`).

    Raises:
        DataError: an input inside the folders fetch replaces, several sources, an unknown dataset
            or bad label options, a missing archive or folder, or a failed download.
    """
    o = options
    check_inputs_outside(
        [data_dir / "images", data_dir / ".images.partial", data_dir / COLUMNS],
        {
            opt("source_dir"): o.source_dir,
            opt("archive"): o.archive,
            opt("cache_dir"): o.cache_dir,
            opt("labels_csv"): o.labels_csv,
        },
    )
    given = [name for name, v in ((opt("source_dir"), o.source_dir), (opt("archive"), o.archive),
                                  (opt("synthetic"), o.synthetic)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise DataError(f"give one source, not {' and '.join(given)}")
    reading = plan_source(
        o.dataset or DEFAULT_DATASET,
        task=o.task,
        malignant=o.malignant,
        labels_csv=o.labels_csv,
        image_column=o.image_column,
        label_column=o.label_column,
        group_columns=o.group_columns,
        forced=o.dataset is not None or not given,
    )
    plan = _locate(data_dir, o, reading)
    plan.settings = {
        "val_fraction": o.val_fraction,
        "test_fraction": o.test_fraction,
        "seed": o.seed,
        "near_dup_distance": o.near_dup_distance,
        "near_dup_confirm": o.near_dup_confirm,
        **reading.options(),
        **({"reference": reference_fingerprint(o.reference)} if o.reference else {}),
    }
    plan.fingerprint = inputs_fingerprint(plan.source, plan.archive, plan.source_dir, plan.settings)
    plan.current = None if o.force else up_to_date(data_dir, plan.fingerprint)
    return plan


def _locate(data_dir: Path, o: FetchOptions, reading: SourcePlan) -> FetchPlan:
    """The source's kind and place (downloading a Kaggle dataset); settings and fingerprint unset."""
    if o.archive is not None:
        if not Path(o.archive).is_file():
            raise DataError(f"archive {o.archive} does not exist")
        source = {"kind": "archive", "path": str(Path(o.archive).resolve())}
        return FetchPlan("archive", reading, source, archive=o.archive)
    if o.source_dir is not None:
        if not Path(o.source_dir).is_dir():
            raise DataError(f"source dir {o.source_dir} does not exist")
        if data_dir.resolve().is_relative_to(Path(o.source_dir).resolve()):
            raise DataError(
                f"{opt('data_dir')} {data_dir} must not lie inside {opt('source_dir')} "
                f"{o.source_dir}"
            )
        source = {"kind": "source_dir", "path": str(Path(o.source_dir).resolve())}
        return FetchPlan("source_dir", reading, source, source_dir=o.source_dir)
    if o.synthetic is not None:
        source = {"kind": "synthetic", "n": o.synthetic}
        return FetchPlan("synthetic", reading, source, synthetic=o.synthetic)
    reading.check_downloadable()
    name = reading.spec.name
    archive, downloaded = download_dataset(
        name, o.cache_dir, client=o.client, force=o.force, progress=o.progress("download")
    )
    source = {"kind": "kaggle", "dataset": name, "archive": str(archive)}
    return FetchPlan("kaggle", reading, source, archive=archive, downloaded=downloaded)
