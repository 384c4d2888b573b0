"""Fetch over a process pool: the same dataset as one process, and a hash cache by content."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data import hashcache, parallel
from skincls.data.fetch import fetch
from skincls.data.hashcache import CACHE_NAME, CACHE_VERSION, HashCache
from skincls.errors import DataError
from tests.data.test_fetch import _lesion, _tree
from tests.data.traced import traced_peak


def _source(root, per_folder=6):
    src = _tree(root, per_folder=per_folder)
    (src / "train" / "benign" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "train" / "benign" / "notes.txt").write_text("not an image")
    return src


def _counting(monkeypatch) -> list:
    """Count the images decoded (in this process: workers=1)."""
    real, calls = parallel.inspect_bytes, []

    def counted(data):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(parallel, "inspect_bytes", counted)
    return calls


def test_pool_gives_the_serial_dataset(tmp_path, monkeypatch):
    src = _source(tmp_path / "src")
    serial = fetch(tmp_path / "one", source_dir=src, workers=1)
    monkeypatch.setattr(parallel, "_POOL_FROM", 0)  # a pool even for a few images
    monkeypatch.setattr(parallel, "_BATCH", 3)  # and many batches, finishing in any order
    pooled = fetch(tmp_path / "two", source_dir=src, workers=2)
    for name in ("manifest.csv", "skipped.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    assert serial.skipped == pooled.skipped and len(serial.skipped) == 2
    assert serial.info.duplicates == pooled.info.duplicates


def test_inspect_all_in_order_from_a_pool(tmp_path, monkeypatch):
    src = _source(tmp_path / "src", per_folder=4)
    rels = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.*"))
    read = parallel.FileReader(src)
    serial = list(parallel.inspect_all(read, rels, workers=1))
    monkeypatch.setattr(parallel, "_POOL_FROM", 0)
    monkeypatch.setattr(parallel, "_BATCH", 2)
    pooled = list(parallel.inspect_all(read, rels, workers=2))
    assert [(r.reason, r.sha256, r.skin) for r in serial] == [
        (r.reason, r.sha256, r.skin) for r in pooled
    ]
    assert all(
        (a.hashes is None and b.hashes is None) or np.array_equal(a.hashes, b.hashes)
        for a, b in zip(serial, pooled)
    )


def test_images_are_read_as_they_are_consumed(tmp_path):
    src = _tree(tmp_path / "src", per_folder=20)
    rels = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.jpg"))
    reads = []

    def read(rel):
        reads.append(rel)
        return (src / rel).read_bytes()

    results = parallel.inspect_all(read, rels, workers=1)
    next(results)
    assert len(reads) <= parallel._BATCH < len(rels)  # never all images at once


def test_refetch_decodes_only_new_images(tmp_path, monkeypatch):
    src = _tree(tmp_path / "src", per_folder=3)
    calls = _counting(monkeypatch)
    fetch(tmp_path / "d", source_dir=src, workers=1)
    assert len(calls) == 12 and (tmp_path / "d" / CACHE_NAME).is_file()
    # The dataset grew by two images: only they are decoded, the rest come from the cache.
    for n in (100, 101):
        _lesion(n, True).save(src / "train" / "malignant" / f"new{n}.jpg")
    calls.clear()
    grown = fetch(tmp_path / "d", source_dir=src, workers=1)
    assert len(calls) == 2 and len(grown.manifest.records) == 14
    calls.clear()
    again = fetch(tmp_path / "d", source_dir=src, workers=1, force=True)
    assert calls == []
    assert [r.__dict__ for r in again.manifest.records] == [
        r.__dict__ for r in grown.manifest.records
    ]


def test_cache_of_another_version_or_damaged_is_not_used(tmp_path, monkeypatch):
    src = _tree(tmp_path / "src", per_folder=2)
    calls = _counting(monkeypatch)
    fetch(tmp_path / "d", source_dir=src, workers=1)
    cache = tmp_path / "d" / CACHE_NAME
    assert len(HashCache(cache)) == 8
    monkeypatch.setattr("skincls.data.hashcache.CACHE_VERSION", "another decoder")
    assert len(HashCache(cache)) == 0
    calls.clear()
    fetch(tmp_path / "d", source_dir=src, workers=1, force=True)
    assert len(calls) == 8
    cache.write_bytes(b"PK\x03\x04 damaged")
    calls.clear()
    fetch(tmp_path / "d", source_dir=src, workers=1, force=True)
    assert len(calls) == 8


def test_workers_below_one_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"workers must be at least 1, not 0"):
        fetch(tmp_path / "d", synthetic=8, workers=0)
    result = CliRunner().invoke(
        main, ["fetch", "--data-dir", str(tmp_path / "d"), "--synthetic", "8", "--workers", "0"]
    )
    assert result.exit_code == 2 and "--workers" in result.output


class _Dies:
    """A reader whose worker process exits at once (killed, out of memory…)."""

    def __call__(self, rel):
        os._exit(3)


def test_a_worker_that_dies_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(parallel, "_POOL_FROM", 0)
    with pytest.raises(
        DataError, match=r"a worker process stopped .*run fetch again with workers=1"
    ):
        list(parallel.inspect_all(_Dies(), [f"{i}.jpg" for i in range(8)], workers=2))


def test_workers_start_from_a_fork_server_while_threads_run():
    # One thread: a plain fork (a script without `if __name__ == '__main__':` works); with a
    # progress bar's refresher running, forking could deadlock the child.
    if threading.active_count() == 1:  # other tests of the session may leave threads behind
        assert parallel._context().get_start_method() == "fork"
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert parallel._context().get_start_method() == "forkserver"
    finally:
        stop.set()
        thread.join()


def test_cache_reads_hex_digests_stored_as_unicode_and_saves_each_once(tmp_path, monkeypatch):
    # Caches written before the cache held ASCII digests stored them as U64: still read.
    path = tmp_path / CACHE_NAME
    sha = [f"{i:064x}" for i in range(3)]
    hashes = np.arange(3 * 16, dtype=np.uint64).reshape(3, 2, 8)
    skin = np.array([["12.5", "tan"], ["", "unknown"], ["40.1", "light"]])
    np.savez(path, version=np.array(CACHE_VERSION), sha256=np.array(sha), hashes=hashes, skin=skin)
    cache = HashCache(path)
    hit = cache.get(sha[2])
    assert len(cache) == 3 and cache.get("f" * 64) is None
    assert hit.skin == (("ita", "40.1"), ("skin_tone", "light"))
    assert np.array_equal(hit.hashes, hashes[2])
    monkeypatch.setattr(hashcache, "_CHUNK", 1)  # written a row at a time
    twice = np.array([sha[1], sha[0], sha[1]], dtype="S64")  # one image's bytes twice
    cache.save(twice, hashes[[1, 0, 1]], np.array([1, 0, 1]), skin)
    again = HashCache(path)
    assert len(again) == 2 and np.array_equal(again.get(sha[1]).hashes, hashes[1])
    assert again.get(sha[1]).skin == (("ita", ""), ("skin_tone", "unknown"))
    assert np.array_equal(again.get(sha[0]).hashes, hashes[0])


def test_cache_save_holds_no_copy_or_index_per_image(tmp_path, monkeypatch):
    # ISIC 2024 has 401,059 images: `save` reads the table's memory-mapped columns a chunk at a
    # time and finds repeated bytes by each one's first 8 bytes (~9 bytes an image), never a copy,
    # hex digest or index per image (~300 bytes an image before).
    from skincls.data.fetch.table import ImageTable

    monkeypatch.setattr(hashcache, "_CHUNK", 1 << 10)  # a small fixed share
    n, rng = 20_000, np.random.default_rng(0)
    table = ImageTable(n, tmp_path / "columns")
    shas = [rng.bytes(32).hex() for _ in range(n)]
    shas[7] = shas[19_999] = shas[3]  # one image's bytes three times
    for i, sha in enumerate(shas):
        table.append(f"{i}.jpg", "benign", None, sha, np.full((2, 8), i, np.uint64), None, ())
    cache = HashCache(tmp_path / CACHE_NAME)
    _, peak = traced_peak(lambda: cache.save(table.sha256_raw, table.hashes, *table.skin_table()))
    saved = HashCache(tmp_path / CACHE_NAME)
    assert len(saved) == n - 2 and saved.get(shas[3]).hashes[0, 0] == 3
    assert saved.get(shas[19_998]).hashes[0, 0] == 19_998
    assert peak / n < 30, f"{peak / n:.0f} bytes an image"  # 56 before


def test_cache_keeps_a_skin_code_per_image_and_ignores_codes_it_cannot_read(tmp_path, monkeypatch):
    # ISIC 2024 has 401,059 images and a few hundred distinct (ITA, skin tone) pairs: the cache
    # stores each image's code into a table of them, not the pair's strings (~96 bytes an image).
    src = _tree(tmp_path / "src", per_folder=2)
    monkeypatch.setattr(hashcache, "_CHUNK", 3)  # rows written 3 at a time: 3 + 3 + 2
    fetch(tmp_path / "d", source_dir=src, workers=1)
    path = tmp_path / "d" / CACHE_NAME
    with np.load(path) as z:
        files = {name: z[name] for name in z.files}
    assert sorted(files) == ["hashes", "sha256", "skin_codes", "skin_values", "version"]
    codes, values = files["skin_codes"], files["skin_values"]
    assert codes.dtype == np.uint32 and codes.shape == (8,) and values.shape[1] == 2
    cache = HashCache(path)
    first = cache.get(files["sha256"][0].decode())
    tone = (("ita", str(values[codes[0], 0])), ("skin_tone", str(values[codes[0], 1])))
    assert first.skin == tone and first.skin[1][1] != ""
    # A code past the table (a damaged or foreign file) is no skin tone: the cache is not used.
    np.savez(path, **{**files, "skin_codes": codes + np.uint32(len(values))})
    assert len(HashCache(path)) == 0
