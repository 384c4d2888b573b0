"""Download: fetch a Kaggle dataset archive into a local cache, behind a one-method client adapter.

The `kaggle` package authenticates when it is imported and prints a long help text (older versions
then call `exit(1)`), so it is imported lazily, with its output captured, and every way it can fail
becomes one `DataError` that says how to provide credentials or how to work offline.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..errors import DataError, opt
from .guards import check_writable_dir, os_error

__all__ = [
    "CREDENTIALS_HELP",
    "DEFAULT_DATASET",
    "DatasetClient",
    "KaggleClient",
    "default_cache_dir",
    "download_dataset",
]

DEFAULT_DATASET = "fanconic/skin-cancer-malignant-vs-benign"
CREDENTIALS_HELP = (
    "Give Kaggle credentials one of three ways: set KAGGLE_API_TOKEN, save the token to "
    "~/.kaggle/access_token, or put the legacy key file at ~/.kaggle/kaggle.json "
    "(tokens: https://www.kaggle.com/settings/api). Offline? Use "
    f"{opt('archive=FILE.zip')} or {opt('source_dir=DIR')}."
)
ByteProgress = Callable[[int, "int | None"], None]
# OWNER/NAME as Kaggle spells them: each part starts with a letter or digit, so neither can be `.`,
# `..` or empty, and the cache folder built from them stays inside the cache.
_DATASET_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class _NotAnArchive(DataError):
    """The download went through but brought no zip: credentials and network are not the cause."""


class DatasetClient(Protocol):
    """Anything that can put a dataset's zip archive into a folder (Kaggle, or a fake in tests)."""

    def download(self, dataset: str, dest: Path, progress: ByteProgress | None = None) -> Path:
        """Download `dataset` (OWNER/NAME) as a zip into the empty folder `dest`; return its path."""
        ...


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/skincls/kaggle`, or `~/.cache/skincls/kaggle`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skincls" / "kaggle"


@contextlib.contextmanager
def _quiet():
    # kaggle prints banners, URLs and its auth help; the CLI reports in its own words.
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield sink


@contextlib.contextmanager
def _watch_size(folder: Path, progress: ByteProgress | None, every: float = 0.25):
    """Report the bytes written under `folder` while the block runs (kaggle draws tqdm, not ours)."""
    if progress is None:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError):  # files come and go while kaggle works
                progress(sum(p.stat().st_size for p in folder.glob("*") if p.is_file()), None)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _import_kaggle():
    import kaggle  # authenticates at import time

    return kaggle


class KaggleClient:
    """The real client: `kaggle.api.dataset_download_files`, imported on first use."""

    def _api(self):
        with _quiet() as out:
            try:
                api = _import_kaggle().api
                if not getattr(api, "_authenticated", False):
                    api.authenticate()  # kaggle >= 1.7 swallows the import-time failure
            except (SystemExit, Exception) as exc:
                raise DataError(_cause(exc, out.getvalue())) from None
        return api

    def download(self, dataset: str, dest: Path, progress: ByteProgress | None = None) -> Path:
        """Download `dataset` into `dest` (authenticating first); return the zip's path."""
        api = self._api()
        with _quiet() as out, _watch_size(dest, progress):
            try:
                api.dataset_download_files(dataset, path=str(dest), force=True, quiet=True)
            except (SystemExit, Exception) as exc:
                raise DataError(_cause(exc, out.getvalue())) from None
        zips = sorted(dest.glob("*.zip"))
        if not zips:
            raise _NotAnArchive(f"Kaggle sent no zip archive for {dataset}")
        return zips[0]


def _cause(exc: BaseException, output: str) -> str:
    if isinstance(exc, SystemExit) or "authenticat" in output.lower():
        return "no usable Kaggle credentials found"
    text = str(exc).strip().splitlines()
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return f"Kaggle refused the credentials (HTTP {status})"
    if status == 404:
        return "Kaggle has no such dataset (HTTP 404)"
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"


def download_dataset(
    dataset: str = DEFAULT_DATASET,
    cache_dir: str | Path | None = None,
    *,
    client: DatasetClient | None = None,
    force: bool = False,
    progress: ByteProgress | None = None,
) -> tuple[Path, bool]:
    """The dataset's zip archive in the cache, downloaded only when missing or when `force`.

    Args:
        dataset: Kaggle dataset as OWNER/NAME.
        cache_dir: Cache root; the archive goes to `cache_dir/OWNER/NAME/NAME.zip`.
        client: Download adapter; the real Kaggle client when None.
        force: Download again even when a cached archive exists.
        progress: Called with (bytes so far, total or None) during a download.

    Returns:
        The archive path, and whether it was downloaded now (False: reused from the cache).

    Raises:
        DataError: bad dataset name, missing credentials or network failure (with how to provide
            credentials or work offline), or a download that is not a zip archive.
    """
    if not _DATASET_RE.fullmatch(dataset):
        raise DataError(
            f"{opt('dataset')} must look like OWNER/NAME (letters, digits, '-', '_', '.'; each part "
            f"starting with a letter or digit), got {dataset!r}"
        )
    owner, name = dataset.split("/")
    cache = Path(cache_dir or default_cache_dir())
    folder = cache / owner / name
    if not folder.resolve().is_relative_to(cache.resolve()):  # belt and braces after the pattern
        raise DataError(f"{opt('dataset')} {dataset!r} leads outside the cache folder {cache}")
    archive = folder / f"{name}.zip"
    if archive.is_file() and not force and zipfile.is_zipfile(archive):
        return archive, False
    check_writable_dir(cache, opt("cache_dir"))
    partial = folder / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise os_error(exc, f"cannot create the download folder {partial}") from exc
    try:
        try:
            got = (client or KaggleClient()).download(dataset, partial, progress)
            if not zipfile.is_zipfile(got):
                raise _NotAnArchive(f"the download is not a zip archive: {got.name}")
        except _NotAnArchive as exc:
            raise DataError(f"could not download {dataset} from Kaggle: {exc}") from None
        except DataError as exc:
            raise DataError(
                f"could not download {dataset} from Kaggle: {exc}. {CREDENTIALS_HELP}"
            ) from None
        except Exception as exc:  # a client's own network error, whatever its type
            raise DataError(
                f"could not download {dataset} from Kaggle: {_cause(exc, '')}. {CREDENTIALS_HELP}"
            ) from None
        # Only a complete download replaces the cached copy, so an interrupted one is never reused.
        got.replace(archive)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return archive, True
