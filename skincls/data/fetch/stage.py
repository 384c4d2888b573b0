"""Stage: put the source's files under `images/`, through a partial folder, in the layout they are read.

The files land in `.images.partial` first (extracted, copied or generated); only a source that went
in whole replaces `images/`, and `dataset.json` is removed before it does: a data dir whose images
were replaced but not yet indexed never looks up to date.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

from ...errors import DataError
from ..info import DATASET_JSON
from ..ingest import Layout, copy_source, extract_archive
from ..isic2024 import HDF5_NAME, METADATA_NAME, Isic2024Files, find_isic2024, index_isic2024
from ..layouts import Selector
from ..sources import SourcePlan
from .records import FetchOptions, FetchPlan, StagedFiles

__all__ = ["PARTIAL", "stage_files"]

PARTIAL = ".images.partial"  # the folder a source is staged in, next to images/


def stage_files(data_dir: Path, plan: FetchPlan, options: FetchOptions) -> StagedFiles:
    """Extract, copy or generate the plan's source into `data_dir/images` (replacing what was
    there) and return where the files are and the layout they were read in.

    Each source checks its input before writing: a refused archive leaves no trace, not even
    folders, and the previous `images/` stays as it was.
    """
    staging = data_dir / PARTIAL
    shutil.rmtree(staging, ignore_errors=True)
    try:
        layout = _fill(staging, plan, options)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.mkdir(parents=True, exist_ok=True)
    images = data_dir / "images"
    # The old dataset.json goes first: a half-replaced data dir must never look up to date.
    (data_dir / DATASET_JSON).unlink(missing_ok=True)
    if images.exists():  # no ignore_errors: a file that cannot go is named, not left to mix in
        shutil.rmtree(images)
    staging.replace(images)
    return StagedFiles(images, layout)


def _fill(staging: Path, plan: FetchPlan, options: FetchOptions) -> Layout:
    """Write the source's dataset files into `staging`; return their layout."""
    select = _select(plan.reading)
    layout = None
    if plan.archive is not None:
        layout = extract_archive(
            plan.archive,
            staging,
            max_bytes=options.max_archive_bytes,
            progress=options.on_progress,
            select=select,
        )
    elif plan.source_dir is not None:
        layout = copy_source(plan.source_dir, staging, progress=options.on_progress, select=select)
    if isinstance(layout, Isic2024Files):  # the HDF5 file went in whole: its images are indexed
        return index_isic2024(staging, layout, plan.reading.policy)
    if layout is not None:
        return layout
    plan.reading.generate_synthetic(staging, plan.synthetic, options.seed)
    made = {PurePosixPath(p.relative_to(staging).as_posix()): p for p in staging.rglob("*")}
    files = [k for k, p in made.items() if p.is_file()]
    layout = select(files, None, lambda k: made[k].read_bytes())
    for extra in set(files) - {PurePosixPath(*layout.prefix, *f.parts) for f in layout.files}:
        made[extra].unlink()  # the CSV: images/ holds images only
    return layout


def _select(reading: SourcePlan) -> Selector:
    """The source's selector, which first looks for ISIC 2024's HDF5 file when the layout is
    `isic2024` or detected (then only that file and the metadata CSV are copied)."""
    inner = reading.selector()
    layout = reading.spec.layout if reading.forced else "auto"
    if layout not in ("isic2024", "auto") or reading.labels_csv is not None:
        return inner

    def select(paths, fingerprints=None, read=None) -> Layout:
        paths = list(paths)
        found = find_isic2024(paths)
        if found is not None:
            return found
        if layout == "isic2024":
            raise DataError(
                f"no {METADATA_NAME} with {HDF5_NAME} beside it in the source: is it ISIC 2024 "
                "(the Kaggle competition isic-2024-challenge)?"
            )
        return inner(paths, fingerprints, read)

    return select
