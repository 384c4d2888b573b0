"""Fetch: bring a dataset into a data dir (Kaggle, an archive, a folder or synthetic) and index it.

One call runs the whole preparation: get the files, verify every image, find duplicates, assign
leak-free splits and write `manifest.csv` + `dataset.json`. Running it again with the same inputs and
options changes nothing: a fingerprint of both is kept in `dataset.json`.

The work is a chain of stages, each in its own module, handing a typed record (`records`) on:
`plan_fetch` (which source, where, up to date?) → `stage_files` (into `images/` through a partial
folder) → `verify_images` (decode, hash, skip with reasons) → `curate` (duplicates, groups, splits)
→ `write_dataset` (`manifest.csv`, `skipped.csv`, `dataset.json`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import shutil
from pathlib import Path

from ...errors import DataError, opt
from ...locks import lock_dir
from ..dedup import DEFAULT_CONFIRM_DISTANCE, DEFAULT_NEAR_DUP_DISTANCE
from ..download import DEFAULT_DATASET, DatasetClient
from ..guards import output_dir_checked
from ..hashcache import CACHE_NAME, HashCache
from ..ingest import IMAGE_SUFFIXES, MAX_ARCHIVE_BYTES
from ..parallel import default_workers
from .curate import curate, load_references
from .plan import plan_fetch
from .records import FetchOptions, FetchReport, ProgressCallback
from .stage import stage_files
from .table import COLUMNS
from .verify import verify_images
from .write import write_dataset

__all__ = [
    "DEFAULT_DATASET",
    "IMAGE_SUFFIXES",
    "FetchOptions",
    "FetchReport",
    "ProgressCallback",
    "fetch",
]


_BUSY_ADVICE = f"wait for it to finish, or give another {opt('data_dir')}"


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


@output_dir_checked(opt("data_dir"), "fetch failed")
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
    workers: int | None = None,
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
        workers: Processes that decode and hash the images (default: every core); the result
            does not depend on it. Hashes are cached in the data dir (`hash_cache.npz`) by the
            SHA-256 of each image's bytes: fetching again decodes only images not seen before.

    Raises:
        DataError: conflicting sources, unreadable or unsafe inputs, fewer than two classes, a
            folder that cannot be written, an OS error, or a failed download (with how to fix it).
        LockError: another process is writing into `data_dir` (its pid is named).
    """
    if workers is not None and workers < 1:
        raise DataError(f"{opt('workers')} must be at least 1, not {workers}")
    options = FetchOptions(
        source_dir=source_dir,
        archive=archive,
        synthetic=synthetic,
        dataset=dataset,
        cache_dir=cache_dir,
        client=client,
        force=force,
        max_archive_bytes=max_archive_bytes,
        task=task,
        malignant=malignant,
        labels_csv=labels_csv,
        image_column=image_column,
        label_column=label_column,
        group_columns=group_columns,
        reference=reference,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        near_dup_distance=near_dup_distance,
        near_dup_confirm=near_dup_confirm,
        on_progress=on_progress,
        workers=workers,
    )
    return _run(Path(data_dir), options)


def _run(data_dir: Path, options: FetchOptions) -> FetchReport:
    """The stages in order; each hands its record to the next."""
    plan = plan_fetch(data_dir, options)
    if plan.current is not None:  # already prepared from these inputs: nothing is written
        current = plan.current
        skipped = list(current.info.skipped)
        return FetchReport(data_dir, current.info, skipped, False, plan.downloaded, current)
    # References are read first: a bad one stops the run before anything is written.
    references = load_references(options)
    workers = options.workers or default_workers()
    columns = data_dir / COLUMNS  # the table's columns as files; a killed fetch's removed first
    shutil.rmtree(columns, ignore_errors=True)
    try:
        # The staged layout's record per file is dropped after verification: columns go on.
        verified = verify_images(
            stage_files(data_dir, plan, options),
            options.on_progress,
            workers=workers,
            cache=HashCache(data_dir / CACHE_NAME),
            columns=columns,
        )
        _give_back_freed_memory()  # the listing's and verification's, before curation's peak
        curated = curate(verified.table, references, options)
        _give_back_freed_memory()  # curation's, before the manifest's
        info = write_dataset(data_dir, plan, verified, curated)
    finally:
        shutil.rmtree(columns, ignore_errors=True)
    return FetchReport(data_dir, info, verified.skipped, changed=True, downloaded=plan.downloaded)


def _give_back_freed_memory() -> None:
    """Return the heap's freed pages to the system (glibc's `malloc_trim`), which otherwise keeps
    them: a later stage's peak then comes on top of an earlier one's (measured: +6 MiB at 160,000
    ISIC 2024 images). Elsewhere (no glibc) nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
