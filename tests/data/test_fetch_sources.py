"""Source folders and paths: classes, unreadable folders and files, symbolic links, where fetch may write.

Tests run as root here, where chmod 000 stops nothing: unreadable folders and files are simulated by
making the one call that reads them raise `PermissionError`, as it would for a normal user.
"""

from __future__ import annotations

import builtins
import csv
import errno
import os
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from skincls.cli import main
from skincls.data import parallel
from skincls.data.fetch import fetch
from skincls.data.fetch import write as write_stage
from skincls.errors import DataError
from tests.data.test_fetch import FakeKaggle, _lesion, _tree, _zip_tree


def _flat(root: Path, classes=("benign", "malignant"), per_class: int = 4, seed: int = 0) -> Path:
    """`root/class/i.jpg` with distinct lesions."""
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for _ in range(per_class):
            _lesion(seed, label != "benign").save(root / label / f"{seed}.jpg")
            seed += 1
    return root


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output


# --- classes ---------------------------------------------------------------------------------


def test_one_class_source_is_refused_before_anything_is_written(tmp_path):
    src = _flat(tmp_path / "src", classes=("benign",))
    data = tmp_path / "d"
    r = CliRunner().invoke(main, ["fetch", "--source-dir", str(src), "--data-dir", str(data)])
    _one_line_error(r, "only one class folder (benign/", "at least two")
    assert not data.exists()
    # The same from an archive in split/class/file layout.
    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w") as zf:
        for p in sorted(_tree(tmp_path / "t", per_folder=2).rglob("*.jpg")):
            if p.parent.name == "benign":
                zf.write(p, p.relative_to(tmp_path / "t").as_posix())
    with pytest.raises(DataError, match=r"only one class folder \(benign/"):
        fetch(data, archive=one)
    assert not data.exists()


def test_class_whose_every_image_is_skipped_leaves_one_class_and_is_refused(tmp_path):
    src = _flat(tmp_path / "src")
    for p in (src / "malignant").iterdir():
        p.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError) as err:
        fetch(tmp_path / "d", source_dir=src)
    msg = str(err.value)
    assert "only one class (benign)" in msg and "every image of malignant was skipped" in msg
    assert not (tmp_path / "d" / "dataset.json").exists()


def test_case_variant_class_folders_are_refused_naming_both(tmp_path):
    src = _flat(tmp_path / "src")
    _flat(src, classes=("Malignant",), seed=50)
    r = CliRunner().invoke(
        main, ["fetch", "--source-dir", str(src), "--data-dir", str(tmp_path / "d")]
    )
    _one_line_error(r, "Malignant/ and malignant/", "differ only in case")
    assert not (tmp_path / "d").exists()


def test_class_folder_a_spreadsheet_would_run_is_refused(tmp_path):
    src = _flat(tmp_path / "src", classes=("benign", "=1+2"))
    r = CliRunner().invoke(
        main, ["fetch", "--source-dir", str(src), "--data-dir", str(tmp_path / "d")]
    )
    _one_line_error(r, "class folder =1+2/ (at the source's top level) starts with '='", "formula")
    assert not (tmp_path / "d").exists()


# --- unreadable folders and files ------------------------------------------------------------


def test_unreadable_class_folder_is_fatal(tmp_path, monkeypatch):
    src = _flat(tmp_path / "src", classes=("benign", "malignant", "nevus"))
    locked = src / "nevus"
    real = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError) as err:
        fetch(tmp_path / "d", source_dir=src)
    msg = str(err.value)
    assert f"cannot read folder {locked}: Permission denied" in msg and "chmod" in msg
    assert not (tmp_path / "d").exists()


def test_unreadable_files_are_skipped_listed_and_counted(tmp_path, monkeypatch):
    src = _flat(tmp_path / "src", per_class=5)
    locked = {src / "benign" / "0.jpg", src / "malignant" / "5.jpg"}
    real = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        if "r" in mode and isinstance(file, (str, Path)) and Path(file) in locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    data = tmp_path / "d"
    r = CliRunner().invoke(
        main, ["fetch", "--source-dir", str(src), "--data-dir", str(data), "--quiet"]
    )
    monkeypatch.undo()
    assert r.exit_code == 0, r.output
    assert "8 images kept, 2 skipped" in r.output
    assert "2 × unreadable" in r.output and "skipped.csv" in r.output
    with (data / "skipped.csv").open(newline="") as fh:
        rows = {row["path"]: row["reason"] for row in csv.DictReader(fh)}
    assert rows == {
        "benign/0.jpg": "unreadable: Permission denied",
        "malignant/5.jpg": "unreadable: Permission denied",
    }


# --- symbolic links --------------------------------------------------------------------------


def test_symbolic_links_are_followed_and_bad_ones_listed(tmp_path):
    src = _flat(tmp_path / "src", per_class=3)
    elsewhere = _flat(tmp_path / "elsewhere", classes=("nevus",), per_class=3, seed=40)
    _lesion(60, True).save(tmp_path / "outside.jpg")
    (src / "malignant" / "linked.jpg").symlink_to(tmp_path / "outside.jpg")  # a linked file
    (src / "nevus").symlink_to(elsewhere / "nevus", target_is_directory=True)  # a linked class
    (src / "benign" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")  # dangling
    (src / "benign" / "loop").symlink_to(src, target_is_directory=True)  # back to the root
    report = fetch(tmp_path / "d", source_dir=src, near_dup_distance=-1)
    assert report.manifest.classes == ["benign", "malignant", "nevus"]
    paths = {r.path for r in report.manifest.records}
    assert "images/malignant/linked.jpg" in paths
    assert sum(p.startswith("images/nevus/") for p in paths) == 3
    assert len(paths) == 10
    reasons = dict(report.skipped)
    assert reasons["benign/gone.jpg"].startswith("broken symbolic link")
    assert reasons["benign/loop/"].startswith("symbolic link loop")
    # Copies, not links: the data dir does not change when the link targets do.
    assert not (tmp_path / "d" / "images" / "malignant" / "linked.jpg").is_symlink()
    # A changed link target is a changed source: not "up to date".
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "outside.jpg")
    assert fetch(tmp_path / "d", source_dir=src, near_dup_distance=-1).changed


# --- paths -----------------------------------------------------------------------------------


@pytest.fixture()
def archive_for_kaggle(tmp_path_factory):
    base = tmp_path_factory.mktemp("kaggle")
    return _zip_tree(_tree(base / "t", per_folder=2), base / "kaggle.zip")


@pytest.mark.parametrize("name", ["../etc", "../..", "owner/..", "./x", "o/n/../..", "/etc/x"])
def test_dataset_names_cannot_leave_the_cache(tmp_path, archive_for_kaggle, name):
    cache = tmp_path / "box" / "cache"
    client = FakeKaggle(archive_for_kaggle)
    with pytest.raises(DataError, match=r"^dataset must look like OWNER/NAME|unknown dataset"):
        fetch(tmp_path / "box" / "d", client=client, cache_dir=cache, dataset=name)
    assert client.calls == 0
    assert list(tmp_path.rglob("*")) == []  # nothing written, inside the cache or outside it


@pytest.mark.parametrize("option", ["--data-dir", "--cache-dir"])
def test_impossible_output_paths_are_one_line_errors(tmp_path, option):
    (tmp_path / "file").write_text("a file, not a folder")
    for bad in ("/dev/null/x", str(tmp_path / "file" / "x")):
        args = ["fetch", "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c")]
        args[args.index(option) + 1] = bad
        r = CliRunner().invoke(main, [*args, "--quiet"])
        _one_line_error(r, f"{option} {bad} cannot be created", "is not a folder")


def test_unwritable_data_dir_is_a_one_line_error(tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real(p, mode, **kw)
    )
    r = CliRunner().invoke(
        main, ["fetch", "--synthetic", "8", "--data-dir", str(tmp_path / "d"), "--quiet"]
    )
    _one_line_error(r, f"--data-dir {tmp_path / 'd'} is not writable")


@pytest.mark.parametrize("folder", ["images", ".columns.partial"])  # the hashes' file: removed
def test_source_inside_the_replaced_images_folder_is_refused(tmp_path, folder):
    data = tmp_path / "d"
    src = _flat(data / folder / "mine")
    (src / "notes.txt").write_text("the user's own file")
    with pytest.raises(DataError, match=r"lies inside .*which fetch replaces"):
        fetch(data, source_dir=src)
    assert (src / "notes.txt").read_text() == "the user's own file"


def test_fetch_interrupted_after_replacing_the_images_is_never_up_to_date(tmp_path, monkeypatch):
    # Source B: other images under the very file names of source A.
    a = _flat(tmp_path / "a")
    b = _flat(tmp_path / "b", seed=50)
    for old, new in zip(sorted(b.rglob("*.jpg")), sorted(a.rglob("*.jpg"))):
        old.rename(b / new.relative_to(a))
    fetch(tmp_path / "d", source_dir=a)
    real, calls = parallel.inspect_one, []

    def interrupted(read, rel):  # Ctrl-C (or a kill) while B's images are being checked
        calls.append(rel)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(read, rel)

    monkeypatch.setattr(parallel, "inspect_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch(tmp_path / "d", source_dir=b)
    monkeypatch.setattr(parallel, "inspect_one", real)
    # images/ now holds B's files under A's names: fetching A again must rebuild, not trust them.
    report = fetch(tmp_path / "d", source_dir=a)
    assert report.changed
    for r in report.manifest.records:
        rel = Path(r.path).relative_to("images")
        assert (tmp_path / "d" / r.path).read_bytes() == (a / rel).read_bytes()


def test_os_error_writing_the_manifest_is_fatal_and_not_up_to_date(tmp_path, monkeypatch):
    src = _flat(tmp_path / "src")
    real = write_stage.stream_manifest

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "d" / "manifest.csv"))

    monkeypatch.setattr(write_stage, "stream_manifest", full)
    with pytest.raises(DataError) as err:
        fetch(tmp_path / "d", source_dir=src)
    assert "No space left on device (ENOSPC)" in str(err.value) and "free disk space" in str(
        err.value
    )
    monkeypatch.setattr(write_stage, "stream_manifest", real)
    assert fetch(tmp_path / "d", source_dir=src).changed


# --- file names ------------------------------------------------------------------------------


def test_names_that_are_not_utf8_are_skipped_listed_escaped_and_the_rest_fetched(tmp_path):
    src = _flat(tmp_path / "src")
    odd = os.fsdecode(bytes(src / "benign") + b"/\xff\xfe.jpg")  # as Python holds such a name
    _lesion(70, False).save(odd, format="JPEG")
    os.mkdir(os.fsdecode(bytes(src) + b"/caf\xe9"))  # a Latin-1 folder name
    _lesion(71, True).save(tmp_path / "x.jpg")
    (tmp_path / "x.jpg").rename(os.fsdecode(bytes(src) + b"/caf\xe9/1.jpg"))
    _lesion(72, True).save(src / "=HYPERLINK(1).jpg")  # outside the layout, listed in skipped.csv
    data = tmp_path / "d"
    r = CliRunner().invoke(
        main, ["fetch", "--source-dir", str(src), "--data-dir", str(data), "--quiet"]
    )
    assert r.exit_code == 0, r.output
    assert "benign/\\xff\\xfe.jpg: name not valid UTF-8: rename the file" in r.output
    report = fetch(data, source_dir=src)
    assert not report.changed and len(report.manifest.records) == 8
    reasons = dict(report.skipped)
    assert reasons["benign/\\xff\\xfe.jpg"].startswith("name not valid UTF-8: rename the file")
    assert reasons["caf\\xe9/"].startswith("name not valid UTF-8: rename the folder")
    # skipped.csv is UTF-8, and no cell of it is a formula to a spreadsheet (a `./` keeps the path).
    with (data / "skipped.csv").open(encoding="utf-8", newline="") as fh:
        listed = {row["path"]: row["reason"] for row in csv.DictReader(fh)}
    assert listed["./=HYPERLINK(1).jpg"] == "outside the split/class/file layout"
    assert "benign/\\xff\\xfe.jpg" in listed and "caf\\xe9/" in listed
