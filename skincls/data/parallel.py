"""Parallel: decode, hash and inspect a dataset's images over a process pool, in order.

Each worker reads its images itself (a file under `images/`, or an entry of an HDF5 file) and sends
back only the small `Inspection`: no pixels cross processes, and at most a few batches per worker
are in flight, so memory stays bounded whatever the number of images. Results come back in the
order asked, so the serial path (`workers=1`) and the pool give identical datasets. Images whose
bytes the `HashCache` knows are not decoded again.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import DataError, opt
from .hashcache import HashCache
from .hdf5 import hdf5_member, read_member
from .ingest import IMAGE_SUFFIXES, Inspection, inspect_bytes

__all__ = ["FileReader", "default_workers", "inspect_all"]

# Images per task sent to a worker, and tasks in flight per worker.
_BATCH = 32
_IN_FLIGHT = 4
# Fewer images to decode than this: no pool (starting one costs 1-2 s, ~1,000 images on 2 cores).
_POOL_FROM = 1000

Reader = Callable[[str], bytes]
"""Reads one image's bytes by its path relative to the dataset (picklable: it goes to workers)."""


@dataclass(frozen=True)
class FileReader:
    """Reads images from files under `root` (or from an HDF5 file there, `skincls.data.hdf5`)."""

    root: Path

    def __call__(self, rel: str) -> bytes:
        path = self.root / rel
        member = hdf5_member(path)  # an image inside an HDF5 file (ISIC 2024)
        return path.read_bytes() if member is None else read_member(*member)


def default_workers() -> int:
    """The CPU cores this process may run on (all of them: fetch's default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _not_an_image(rel: str) -> Inspection | None:
    suffix = PurePosixPath(rel).suffix
    if suffix.lower() not in IMAGE_SUFFIXES:
        return Inspection(f"not an image file: suffix {suffix or 'none'}")
    return None


def inspect_one(read: Reader, rel: str) -> Inspection:
    """`ingest.inspect_image` of one image read by `read`."""
    return _not_an_image(rel) or inspect_bytes(read(rel))


def _inspect_batch(read: Reader, rels: Sequence[str]) -> list[Inspection]:
    return [inspect_one(read, rel) for rel in rels]


class _Done:
    """A finished "future": the serial path runs each batch where it is submitted."""

    def __init__(self, value) -> None:
        self._value = value

    def result(self):
        return self._value


def inspect_all(
    read: Reader,
    rels: Sequence[str],
    *,
    workers: int = 1,
    cache: HashCache | None = None,
) -> Iterator[Inspection]:
    """Inspect each of `rels` (`inspect_one`); yield the results in the order of `rels`.

    Args:
        read: Reads an image's bytes; sent to the workers (must pickle).
        workers: Processes that decode and hash; 1 runs everything in this process.
        cache: Known images by content hash: their bytes are read and hashed (SHA-256) here, and
            only images it does not know are decoded.
    """
    known = cache is not None and len(cache) > 0
    pool = None
    if workers > 1 and len(rels) >= _POOL_FROM:
        pool = ProcessPoolExecutor(workers, mp_context=_context())
    pending: deque[tuple[list, Future | _Done]] = deque()
    try:
        for start in range(0, len(rels), _BATCH):
            batch = rels[start : start + _BATCH]
            slots = [_cached(read, rel, cache) if known else None for rel in batch]
            todo = [rel for rel, hit in zip(batch, slots) if hit is None]
            if pool is None:
                pending.append((slots, _Done(_inspect_batch(read, todo))))
            else:
                pending.append((slots, pool.submit(_inspect_batch, read, todo)))
            while len(pending) > _IN_FLIGHT * max(workers, 1) or (pool is None and pending):
                yield from _fill(*pending.popleft())
        while pending:
            yield from _fill(*pending.popleft())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _context():
    """How workers start: forked where this process runs one thread (fastest, and a script
    calling fetch needs no `if __name__ == "__main__":`); else from a fork server, since forking
    a process with threads (a progress bar's refresher) can deadlock the child."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # the server imports the decoders once
    return context


def _cached(read: Reader, rel: str, cache: HashCache) -> Inspection | None:
    """The cache's inspection of `rel`'s bytes, or None when it must be decoded."""
    if _not_an_image(rel):
        return None
    data = read(rel)
    return cache.get(hashlib.sha256(data).hexdigest()) if data else None


def _fill(slots: list, future) -> Iterator[Inspection]:
    """The batch's results in order: cached ones where known, the decoded ones in between."""
    try:
        decoded = iter(future.result())
    except BrokenProcessPool as exc:
        raise DataError(
            f"a worker process stopped ({exc}): run fetch again with "
            f"{opt('workers', value=1)}; from a script, call it under "
            "`if __name__ == '__main__':` (workers started afresh import the script)"
        ) from None
    for hit in slots:
        yield hit if hit is not None else next(decoded)
