"""Archives: OS errors while extracting are fatal and never "up to date"; zip bombs and lying headers."""

from __future__ import annotations

import errno
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.fetch import fetch
from skincls.errors import DataError
from tests.data.test_fetch import _tree, _zip_tree


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    return _tree(tmp_path_factory.mktemp("src") / "tree", per_folder=2)  # 8 images


def _with_member(
    tree: Path, path: Path, name: str, data: bytes, method=zipfile.ZIP_DEFLATED
) -> Path:
    """The images of `tree` plus one extra member `name` holding `data`."""
    _zip_tree(tree, path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(zipfile.ZipInfo(name), data, compress_type=method, compresslevel=9)
    return path


# --- OS errors -------------------------------------------------------------------------------


def test_disk_full_while_extracting_is_fatal_and_the_next_run_redoes_it(
    tmp_path, small_tree, monkeypatch
):
    zpath = _zip_tree(small_tree, tmp_path / "skin.zip")
    data = tmp_path / "d"
    real = shutil.copyfileobj
    calls = []

    def disk_full(src, dst, length=0):
        calls.append(1)
        if len(calls) == 3:  # the third member: a few bytes land, then the disk is full
            dst.write(src.read(10))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, length)

    monkeypatch.setattr(shutil, "copyfileobj", disk_full)
    args = ["fetch", "--archive", str(zpath), "--data-dir", str(data), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output.count("\n") == 1 and "No space left on device (ENOSPC)" in r.output
    assert "cannot write" in r.output and "(extracting '" in r.output
    assert "free disk space" in r.output and "damaged" not in r.output
    assert not (data / "dataset.json").exists() and not (data / "images").exists()
    monkeypatch.setattr(shutil, "copyfileobj", real)  # space freed
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "already up to date" not in again.output and "8 images kept, 0 skipped" in again.output


def _declare_size(zpath: Path, name: str, size: int) -> None:
    """Rewrite the central directory's uncompressed size of `name` (the local header is left)."""
    with zipfile.ZipFile(zpath) as zf:
        info = zf.getinfo(name)
    raw = bytearray(zpath.read_bytes())
    # Find this member's central entry: signature, then its file name at offset 46.
    entry = 0
    while True:
        entry = raw.index(b"PK\x01\x02", entry)
        n = struct.unpack_from("<H", raw, entry + 28)[0]
        if raw[entry + 46 : entry + 46 + n] == info.filename.encode():
            break
        entry += 4
    struct.pack_into("<I", raw, entry + 24, size)
    zpath.write_bytes(bytes(raw))


# --- bombs -----------------------------------------------------------------------------------


def test_compression_ratio_bomb_is_refused_before_writing(tmp_path, small_tree):
    zeros = bytes(20 * 2**20)  # 20 MiB of zeros deflate to ~20 KiB (ratio ~1000:1)
    zpath = _with_member(small_tree, tmp_path / "bomb.zip", "train/benign/bomb.bmp", zeros)
    assert zpath.stat().st_size < 200_000
    with pytest.raises(DataError, match=r"'train/benign/bomb.bmp' has compression ratio \d+:1"):
        fetch(tmp_path / "d", archive=zpath)
    assert not (tmp_path / "d").exists()


def test_many_small_compressible_members_are_refused_as_a_whole(tmp_path, small_tree):
    zpath = _zip_tree(small_tree, tmp_path / "many.zip")
    with zipfile.ZipFile(zpath, "a", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):  # each under the per-member floor, 40 MiB together from ~40 KiB
            zf.writestr(f"train/benign/z{i}.bmp", bytes(2**20 - 1))
    with pytest.raises(DataError, match=r"entries expand \d+× its"):
        fetch(tmp_path / "d", archive=zpath)
    assert not (tmp_path / "d").exists()


def test_member_over_the_per_member_cap_is_refused(tmp_path, small_tree):
    name = "train/benign/big.tif"
    zpath = _with_member(small_tree, tmp_path / "big.zip", name, bytes(4096))
    _declare_size(zpath, name, 2**31)  # 2 GiB declared: under the archive cap, over the member cap
    with pytest.raises(DataError, match=rf"'{name}' expands to 2.0 GiB, past the 1.0 GiB"):
        fetch(tmp_path / "d", archive=zpath)
    assert not (tmp_path / "d").exists()


def test_unbounded_compression_methods_are_refused(tmp_path, small_tree):
    zpath = _with_member(
        small_tree, tmp_path / "bz.zip", "train/benign/x.jpg", b"x" * 100, zipfile.ZIP_BZIP2
    )
    with pytest.raises(DataError, match="compression method bzip2; only stored and deflate"):
        fetch(tmp_path / "d", archive=zpath)


def test_member_holding_more_than_its_header_declares_is_refused(tmp_path, small_tree):
    # Declared 1,000 bytes at a harmless ratio; 4 MiB of zeros inside.
    name = "train/benign/liar.jpg"
    zpath = _with_member(small_tree, tmp_path / "liar.zip", name, bytes(4 * 2**20))
    _declare_size(zpath, name, 1000)
    with zipfile.ZipFile(zpath) as zf:
        assert zf.getinfo(name).file_size == 1000
    r = CliRunner().invoke(
        main, ["fetch", "--archive", str(zpath), "--data-dir", str(tmp_path / "d")]
    )
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert (
        f"refusing archive {zpath}, entry '{name}': it holds more than the 1000 bytes" in r.output
    )
    assert not (tmp_path / "d" / "dataset.json").exists()
    assert not list((tmp_path / "d").rglob("*.jpg"))  # the staging folder was removed


def test_member_with_less_than_declared_is_damaged_not_fatal(tmp_path, small_tree):
    name = "train/benign/short.jpg"
    zpath = _with_member(small_tree, tmp_path / "short.zip", name, b"y" * 500)
    _declare_size(zpath, name, 800)
    report = fetch(tmp_path / "d", archive=zpath, near_dup_distance=-1)
    assert dict(report.skipped)[name].startswith("damaged in the archive")
    assert report.info.n_kept == 8


# --- entry names -----------------------------------------------------------------------------


def _add_entry(zpath: Path, name: str, data: bytes) -> None:
    with warnings.catch_warnings(), zipfile.ZipFile(zpath, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name we mean to add
        zf.writestr(name, data)


def test_two_different_entries_of_one_name_are_refused(tmp_path, small_tree):
    name = "train/benign/0.jpg"
    zpath = _zip_tree(small_tree, tmp_path / "twice.zip")
    _add_entry(zpath, "train\\malignant\\2.jpg", b"a different file, Windows separators")
    _add_entry(zpath, name, (small_tree / "train" / "malignant" / "3.jpg").read_bytes())
    r = CliRunner().invoke(
        main, ["fetch", "--archive", str(zpath), "--data-dir", str(tmp_path / "d")]
    )
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert (
        f"Error: refusing archive {zpath}: it holds different entries under one name "
        f"('{name}', 'train/malignant/2.jpg'); which one is the file cannot be told" in r.output
    )
    assert not (tmp_path / "d").exists()


def test_an_entry_repeated_with_the_same_bytes_is_taken_once(tmp_path, small_tree):
    name = "train/benign/0.jpg"
    zpath = _zip_tree(small_tree, tmp_path / "again.zip")
    _add_entry(zpath, name, (small_tree / name).read_bytes())
    report = fetch(tmp_path / "d", archive=zpath, near_dup_distance=-1)
    assert report.info.n_kept == 8 and not report.skipped


def test_entry_name_that_is_not_the_utf8_it_claims_is_one_line(tmp_path, small_tree):
    zpath = _with_member(small_tree, tmp_path / "bad.zip", "train/benign/\u00e9.jpg", b"x")
    zpath.write_bytes(zpath.read_bytes().replace("\u00e9".encode(), b"\xff\xfe"))
    r = CliRunner().invoke(
        main, ["fetch", "--archive", str(zpath), "--data-dir", str(tmp_path / "d")]
    )
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert f"cannot open archive {zpath}: an entry's name is not the UTF-8" in r.output
