"""Fetch: bring a dataset into a data dir (Kaggle, an archive, a folder or synthetic) and index it.

One call runs the whole preparation: get the files, verify every image, find duplicates, assign
leak-free splits and write `manifest.csv` + `dataset.json`. Running it again with the same inputs and
options changes nothing: a fingerprint of both is kept in `dataset.json`.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError
from ..locks import lock_dir
from .dedup import (
    DEFAULT_CONFIRM_DISTANCE,
    DEFAULT_NEAR_DUP_DISTANCE,
    find_duplicates,
    summarize_duplicates,
)
from .download import DEFAULT_DATASET, DatasetClient, default_cache_dir, download_dataset
from .freshness import FORMAT_VERSION, inputs_fingerprint, up_to_date
from .grouping import build_grouping
from .guards import check_inputs_outside, output_dir_checked
from .info import (
    DATASET_JSON,
    DatasetInfo,
    DatasetSource,
    MovedImage,
)
from .ingest import (
    IMAGE_SUFFIXES,
    MAX_ARCHIVE_BYTES,
    copy_source,
    extract_archive,
    inspect_image,
)
from .layouts import layout_skipped
from .references import load_reference, match_references, reference_fingerprint
from .sources import plan_source, row_of
from .splits import (
    Manifest,
    Record,
    assign_splits,
    unify_groups,
    write_manifest,
)

__all__ = ["DEFAULT_DATASET", "IMAGE_SUFFIXES", "FetchReport", "ProgressCallback", "fetch"]

ProgressCallback = Callable[[str, int, "int | None"], None]
"""Called as `(stage, done, total)`; stages: download (bytes), extract, copy, verify (files)."""


@dataclass
class FetchReport:
    """What fetch did.

    Attributes:
        manifest: The resulting manifest (its `info` is `dataset.json`).
        skipped: `(path, reason)` for every entry left out (also in `skipped.csv` in the data dir);
            the reason's text before its first colon is its kind.
        changed: False when the data dir was already up to date and nothing was written.
        downloaded: True when the archive was downloaded in this call (Kaggle source only).
    """

    manifest: Manifest
    skipped: list[tuple[str, str]] = field(default_factory=list)
    changed: bool = True
    downloaded: bool = False

    @property
    def info(self) -> DatasetInfo:
        """The dataset.json content: source, duplicates, moved images, label conflicts."""
        return self.manifest.info


_BUSY_ADVICE = "wait for it to finish, or give another --data-dir"


def _one_writer(fn):
    """Hold the data dir's lock through `fetch`: two fetches into one data dir would mix datasets.

    Under the lock, temp files of a killed earlier fetch are removed first.
    """

    @functools.wraps(fn)
    def locked(data_dir, *args, **kwargs):
        with lock_dir(data_dir, "skincls fetch", advice=_BUSY_ADVICE) as lock:
            lock.clean_stale_temps()
            return fn(data_dir, *args, **kwargs)

    return locked


@output_dir_checked("--data-dir", "fetch failed")
@_one_writer
def fetch(
    data_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    archive: str | Path | None = None,
    synthetic: int | None = None,
    dataset: str | None = None,
    cache_dir: str | Path | None = None,
    client: DatasetClient | None = None,
    force: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    near_dup_distance: int = DEFAULT_NEAR_DUP_DISTANCE,
    near_dup_confirm: int | None = DEFAULT_CONFIRM_DISTANCE,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    on_progress: ProgressCallback | None = None,
    task: str | None = None,
    malignant: list[str] | None = None,
    labels_csv: str | Path | None = None,
    image_column: str = "image",
    label_column: str = "label",
    group_columns: list[str] | None = None,
    reference: list[str | Path] | None = None,
) -> FetchReport:
    """Prepare `data_dir`: `images/`, `manifest.csv` (path, label, split, sha256, cluster, group,
    lesion_id, patient_id) and `dataset.json`.

    At most one source: `source_dir` (a folder), `archive` (a zip as Kaggle serves it) or `synthetic`
    (that many generated images); with none, `dataset` is downloaded from Kaggle into `cache_dir`
    (reused later; `force` downloads again). A source may be in `split/class/file` layout (its
    test split is kept, val is carved from train), `class/file` (train/val/test are carved), or
    described by a metadata CSV (HAM10000, ISIC 2019, ISIC 2020, or `labels_csv`): then classes come
    from the diagnoses by `task`, and lesions and patients are kept within one split.
    Classes are sorted (benign=0, malignant=1); there must be at least two, and no two class
    folders that differ only in case. Source folders follow symbolic links. Every entry left out
    is listed with its reason (`FetchReport.skipped`, `skipped.csv`); an operating-system error (disk
    full, permissions) stops fetch, and a fetch that did not finish is never taken as up to date:
    `dataset.json` is written last, and removed before the old images are replaced.

    Args:
        dataset: A registered name (`skincls.data.registry`) or Kaggle OWNER/NAME; default: the
            Kaggle dataset `DEFAULT_DATASET`. Given with an offline source, the source is read in
            its layout; otherwise the layout is detected (a known metadata CSV, else class folders).
        task: `binary` (diagnoses → benign/malignant by the documented map) or `multiclass` (one
            class per diagnosis); for metadata datasets only. Default binary.
        malignant: Diagnosis codes counted as malignant in the binary task (see
            `skincls.data.metadata.binary_map`).
        labels_csv: A CSV giving each image's label (`image_column`, `label_column`) and optional
            `group_columns` (default `lesion_id`, `patient_id`, `group` where present).
        reference: Datasets with metadata (archives, folders or prepared data dirs, e.g. HAM10000)
            whose lesion and patient ids the fetched images inherit where they are copies of their
            images (see `skincls.data.references`); hashes are cached under `cache_dir`.
        near_dup_distance: Largest pHash Hamming distance (bits, best of 8 orientations) at which two
            images count as the same lesion; -1 turns near-duplicate search off.
        near_dup_confirm: Largest dHash distance (bits, same orientation) confirming a pHash match;
            None accepts every pHash match.
        max_archive_bytes: Refuse archives that would expand past this many bytes.
        on_progress: Progress callback, see `ProgressCallback`.

    Raises:
        DataError: conflicting sources, unreadable or unsafe inputs, fewer than two classes, a
            folder that cannot be written, an OS error, or a failed download (with how to fix it).
        LockError: another process is writing into `data_dir` (its pid is named).
    """
    data_dir = Path(data_dir)
    check_inputs_outside(
        [data_dir / "images", data_dir / ".images.partial"],
        {
            "--source-dir": source_dir,
            "--archive": archive,
            "--cache-dir": cache_dir,
            "--labels-csv": labels_csv,
        },
    )
    given = [name for name, v in (("--source-dir", source_dir), ("--archive", archive),
                                  ("--synthetic", synthetic)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise DataError(f"give one source, not {' and '.join(given)}")
    downloaded = False
    plan = plan_source(
        dataset or DEFAULT_DATASET,
        task=task,
        malignant=malignant,
        labels_csv=labels_csv,
        image_column=image_column,
        label_column=label_column,
        group_columns=group_columns,
        forced=dataset is not None or not given,
    )
    dataset = plan.spec.name
    if not given:
        plan.check_downloadable()
        archive, downloaded = download_dataset(
            dataset,
            cache_dir,
            client=client,
            force=force,
            progress=(lambda done, total: on_progress("download", done, total))
            if on_progress
            else None,
        )
        source: dict = {"kind": "kaggle", "dataset": dataset, "archive": str(archive)}
    elif archive is not None:
        if not Path(archive).is_file():
            raise DataError(f"archive {archive} does not exist")
        source = {"kind": "archive", "path": str(Path(archive).resolve())}
    elif source_dir is not None:
        if not Path(source_dir).is_dir():
            raise DataError(f"source dir {source_dir} does not exist")
        if data_dir.resolve().is_relative_to(Path(source_dir).resolve()):
            raise DataError(f"--data-dir {data_dir} must not lie inside --source-dir {source_dir}")
        source = {"kind": "source_dir", "path": str(Path(source_dir).resolve())}
    else:
        source = {"kind": "synthetic", "n": synthetic}
    options = {
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "near_dup_distance": near_dup_distance,
        "near_dup_confirm": near_dup_confirm,
        **plan.options(),
        **({"reference": reference_fingerprint(reference)} if reference else {}),
    }
    fingerprint = inputs_fingerprint(source, archive, source_dir, options)
    manifest = None if force else up_to_date(data_dir, fingerprint)
    if manifest is not None:
        skipped = list(manifest.info.skipped)
        return FetchReport(manifest, skipped, changed=False, downloaded=downloaded)

    # References are read first: a bad one stops the run before anything is written.
    ref_cache = Path(cache_dir) if cache_dir else default_cache_dir().parent
    refs = [
        load_reference(r, cache_dir=ref_cache / "references", on_progress=on_progress)
        for r in reference or []
    ]
    images = data_dir / "images"
    staging = data_dir / ".images.partial"
    shutil.rmtree(staging, ignore_errors=True)
    # Each source checks its input before writing; a refused archive leaves no trace, not even dirs.
    try:
        if archive is not None:
            layout = extract_archive(
                archive,
                staging,
                max_bytes=max_archive_bytes,
                progress=on_progress,
                select=plan.selector(),
            )
        elif source_dir is not None:
            layout = copy_source(source_dir, staging, progress=on_progress, select=plan.selector())
        else:
            plan.generate_synthetic(staging, synthetic, seed)
            made = {PurePosixPath(p.relative_to(staging).as_posix()): p for p in staging.rglob("*")}
            files = [k for k, p in made.items() if p.is_file()]
            layout = plan.selector()(files, None, lambda k: made[k].read_bytes())
            for extra in set(files) - {
                PurePosixPath(*layout.prefix, *f.parts) for f in layout.files
            }:
                made[extra].unlink()  # the CSV: images/ holds images only
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.mkdir(parents=True, exist_ok=True)
    # The old dataset.json goes first: a half-replaced data dir must never look up to date.
    (data_dir / DATASET_JSON).unlink(missing_ok=True)
    if images.exists():  # no ignore_errors: a file that cannot go is named, not left to mix in
        shutil.rmtree(images)
    staging.replace(images)

    # Damaged archive members and unreadable files were never written: skipped with their reason.
    candidates = [c for c in layout.candidates() if c.rel not in layout.damaged]
    skipped = layout_skipped(layout)
    n_files = len(layout.files) + len(skipped)
    skipped += sorted(layout.damaged.items())
    kept, sha, hashes = [], [], []
    for n, c in enumerate(candidates, 1):
        result = inspect_image(images / c.rel)
        if result.reason:
            skipped.append((c.rel, result.reason))
        else:
            kept.append(c)
            sha.append(result.sha256)
            hashes.append(result.hashes)
        if on_progress:
            on_progress("verify", n, len(candidates))
    if not kept:
        raise DataError(f"no readable images found under {images} (expected split/class/*.jpg)")
    classes = sorted({c.label for c in kept})
    if len(classes) < 2:
        lost = sorted({c.label for c in layout.candidates()} - set(classes))
        raise DataError(
            f"only one class ({classes[0]}) has usable images"
            + (f"; every image of {', '.join(lost)} was skipped" if lost else "")
            + ": a classifier needs at least two classes, e.g. benign/ and malignant/"
        )

    dups = find_duplicates(sha, np.stack(hashes), near_dup_distance, near_dup_confirm)
    source_splits = [c.split for c in kept]
    rows = [row_of(layout, c.rel) for c in kept]
    prov = match_references(np.stack(hashes), refs) if refs else None
    keys = [(r.keys() if r else []) + (prov.keys[i] if prov else []) for i, r in enumerate(rows)]
    lesion = [
        (r.lesion_id if r else "") or (prov.lesion_ids[i] if prov else "")
        for i, r in enumerate(rows)
    ]
    patient = [
        (r.patient_id if r else "") or (prov.patient_ids[i] if prov else "")
        for i, r in enumerate(rows)
    ]
    # Lesion, patient and duplicate cluster, joined: one group never straddles two splits.
    grouping = build_grouping(keys, dups.cluster)
    unified = unify_groups(source_splits, grouping.ids)
    splits = assign_splits(
        [c.label for c in kept],
        source_splits,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        groups=grouping.ids,
    )
    rel = [f"images/{c.rel}" for c in kept]
    records = [
        Record(
            rel[i],
            c.label,
            splits[i],
            sha[i],
            dups.cluster[i],
            grouping.names[i],
            lesion[i],
            patient[i],
        )
        for i, c in enumerate(kept)
    ]
    moved = [
        MovedImage(
            path=rel[i],
            from_split=s,
            to=unified[i],
            cluster=dups.cluster[i],
            group=grouping.names[i],
        )
        for i, s in enumerate(source_splits)
        if s is not None and s != unified[i]
    ]
    info = DatasetInfo(
        classes=classes,
        format=FORMAT_VERSION,
        fingerprint=fingerprint,
        source=DatasetSource(
            **source,
            layout_root="/".join(layout.prefix) or ".",
            ignored_copies=layout.ignored_copies,
        ),
        **{k: v for k, v in options.items() if k != "labels"},
        class_order="sorted class names; label id = position in classes",
        dataset=plan.describe(layout),
        labels=plan.labels_info(layout),  # what the classes are (options hold the policy asked for)
        metadata=getattr(layout, "summary", None),
        n_files=n_files,
        n_kept=len(kept),
        skipped=skipped,
        duplicates=summarize_duplicates(dups, kept, rel, splits),
        groups=grouping.summary(rel, [c.label for c in kept], splits),
        provenance=prov.report([c.label for c in kept]) if prov else None,
        moved=moved,
    )
    manifest = write_manifest(data_dir, records, info)
    return FetchReport(manifest, skipped, changed=True, downloaded=downloaded)
