"""Fetch: safe archives, verification, duplicates across splits, idempotence, the Kaggle adapter."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from skincls.cli import main
from skincls.data import download
from skincls.data.fetch import fetch
from skincls.data.splits import load_manifest
from skincls.data.synthetic import make_lesion
from skincls.errors import DataError, spell_options


def _lesion(seed: int, malignant: bool, size: int = 64) -> Image.Image:
    return make_lesion(malignant, np.random.default_rng([99, seed]), size=size)


def _tree(root: Path, per_folder: int = 6, splits=("train", "test")) -> Path:
    """`root/split/class/i.jpg` with distinct small lesions."""
    seed = 0
    for split in splits:
        for label in ("benign", "malignant"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(per_folder):
                _lesion(seed, label == "malignant").save(folder / f"{seed}.jpg", quality=90)
                seed += 1
    return root


def _zip_tree(tree: Path, archive: Path, prefixes=("",)) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for prefix in prefixes:
            for p in sorted(tree.rglob("*")):
                if p.is_file():
                    zf.write(p, prefix + p.relative_to(tree).as_posix())
    return archive


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _tree(tmp_path_factory.mktemp("src") / "tree")


@pytest.fixture(scope="module")
def archive(tree, tmp_path_factory) -> Path:
    return _zip_tree(tree, tmp_path_factory.mktemp("zip") / "skin.zip")


# --- safe extraction -------------------------------------------------------------------------


def _evil_zip(path: Path, name: str, *, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        buf = Path(__file__)  # any bytes will do for the good entries
        zf.write(buf, "train/benign/ok.jpg")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if symlink else "pwned")
    return path


@pytest.mark.parametrize(
    ("entry", "symlink", "why"),
    [
        ("../../evil.jpg", False, "'..'"),
        ("train/../../evil.jpg", False, "'..'"),
        ("/tmp/evil.jpg", False, "absolute"),
        ("train/benign/evil.jpg", True, "symbolic link"),
    ],
)
def test_unsafe_archive_is_refused_and_nothing_is_written(tmp_path, entry, symlink, why):
    box = tmp_path / "box"
    data = box / "a" / "b" / "data"
    zpath = _evil_zip(tmp_path / "evil.zip", entry, symlink=symlink)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(DataError) as err:
        fetch(data, archive=zpath)
    assert entry in str(err.value) and why in str(err.value)
    assert not (data / "images").exists()
    assert not list(tmp_path.rglob("evil.jpg")) and not Path("/tmp/evil.jpg").exists()
    assert sorted(tmp_path.rglob("*")) == before  # not even the data dir was created


def test_archive_over_the_size_cap_is_refused(tmp_path, archive):
    with pytest.raises(DataError, match="expands past"):
        fetch(tmp_path / "d", archive=archive, max_archive_bytes=10_000)
    assert not (tmp_path / "d" / "images").exists()


def test_double_copy_archive_ingests_one_copy(tmp_path, tree):
    zpath = _zip_tree(tree, tmp_path / "kaggle.zip", prefixes=("", "data/"))
    report = fetch(tmp_path / "d", archive=zpath, near_dup_distance=-1)
    n = sum(1 for p in tree.rglob("*.jpg"))
    assert len(report.manifest.records) == n == 24
    assert report.info.source.ignored_copies == {"data": n}
    assert not any("data/" in r.path for r in report.manifest.records)
    # A second root that is not a copy is an error, not a silent choice.
    other = _zip_tree(_tree(tmp_path / "other", 2), tmp_path / "two.zip", prefixes=("x/",))
    with zipfile.ZipFile(other, "a") as zf:
        for p in sorted(tree.rglob("*.jpg")):
            zf.write(p, p.relative_to(tree).as_posix())
    with pytest.raises(DataError, match="not copies"):
        fetch(tmp_path / "d2", archive=other)


# --- verification ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_broken_files_are_skipped_with_reasons(tmp_path, monkeypatch):
    src = _tree(tmp_path / "src", per_folder=3)
    good = src / "train" / "benign"
    (good / "empty.jpg").write_bytes(b"")
    (good / "text.jpg").write_text("not a picture")
    (good / "notes.txt").write_text("hello")
    data = (good / "0.jpg").read_bytes()
    (good / "cut.jpg").write_bytes(data[: len(data) // 2])
    _lesion(50, False, size=100).save(good / "huge.png")  # 10,000 px > 2 × limit: bomb error
    _lesion(51, False, size=80).save(good / "big.png")  # 6,400 px > limit: bomb warning
    (src / "README.md").write_text("outside the layout")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)
    report = fetch(tmp_path / "d", source_dir=src, near_dup_distance=-1)
    reasons = dict(report.skipped)
    assert reasons["train/benign/empty.jpg"].startswith("empty file")
    assert reasons["train/benign/text.jpg"].startswith("not an image")
    assert reasons["train/benign/notes.txt"].startswith("not an image file")
    assert reasons["train/benign/cut.jpg"].startswith("corrupt or truncated")
    assert "decompression bomb" in reasons["train/benign/huge.png"]
    assert "decompression bomb" in reasons["train/benign/big.png"]
    assert "outside" in reasons["README.md"]
    assert len(report.manifest.records) == 12
    assert report.info.n_kept + len(report.skipped) == 12 + 7 == report.info.n_files
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert {tuple(s) for s in meta["skipped"]} == set(report.skipped)


def test_damaged_archive_member_is_skipped_and_counted(tmp_path):
    tree = _tree(tmp_path / "src", per_folder=2)  # 8 images
    zpath = tmp_path / "damaged.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(tree.rglob("*.jpg")):
            zf.write(p, p.relative_to(tree).as_posix())
        info = zf.getinfo("train/malignant/2.jpg")
    # Flip a byte inside the stored data of one member: its CRC no longer matches.
    raw = bytearray(zpath.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_start + info.file_size // 2] ^= 0xFF
    zpath.write_bytes(bytes(raw))
    report = fetch(tmp_path / "d", archive=zpath, near_dup_distance=-1)
    reasons = dict(report.skipped)
    assert list(reasons) == ["train/malignant/2.jpg"]
    assert reasons["train/malignant/2.jpg"].startswith("damaged in the archive")
    assert report.info.n_kept == len(report.manifest.records) == 7
    assert report.info.n_files == report.info.n_kept + len(report.skipped) == 8


# --- duplicates and splits -------------------------------------------------------------------


def test_duplicates_across_train_and_test_end_up_in_one_split(tmp_path):
    src = _tree(tmp_path / "src", per_folder=8)
    a = Image.open(src / "train" / "benign" / "0.jpg")
    # A flipped, re-encoded copy of a training image in test, and a byte copy of another one.
    a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / "test/benign/flip.jpg", quality=85)
    shutil.copy(src / "train/malignant/8.jpg", src / "test/malignant/copy.jpg")
    report = fetch(tmp_path / "d", source_dir=src, seed=0, val_fraction=0.3)
    by_path = {r.path: r for r in report.manifest.records}
    for train, test in [
        ("images/train/benign/0.jpg", "images/test/benign/flip.jpg"),
        ("images/train/malignant/8.jpg", "images/test/malignant/copy.jpg"),
    ]:
        assert by_path[train].cluster == by_path[test].cluster
        assert by_path[train].split == by_path[test].split == "test"
    splits_of: dict[int, set[str]] = {}
    for r in report.manifest.records:
        splits_of.setdefault(r.cluster, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    moved = {m.path: m for m in report.info.moved}
    assert set(moved) == {"images/train/benign/0.jpg", "images/train/malignant/8.jpg"}
    assert moved["images/train/benign/0.jpg"].to == "test"
    dup = report.info.duplicates
    assert len(dup.exact_groups) == 1 and len(dup.clusters) == 2
    assert dup.label_conflicts == []


def test_label_conflicts_are_reported(tmp_path):
    src = _tree(tmp_path / "src", per_folder=4)
    shutil.copy(src / "train/benign/0.jpg", src / "train/malignant/same-as-0.jpg")
    report = fetch(tmp_path / "d", source_dir=src)
    (conflict,) = report.info.duplicates.label_conflicts
    assert conflict.labels == ["benign", "malignant"]


def test_same_seed_same_manifest_and_flat_layout_gets_three_splits(tmp_path):
    src = tmp_path / "flat"
    for i in range(30):
        label = "malignant" if i % 2 else "benign"
        (src / label).mkdir(parents=True, exist_ok=True)
        _lesion(i, bool(i % 2)).save(src / label / f"{i}.jpg")
    runs = [fetch(tmp_path / f"d{k}", source_dir=src, seed=s) for k, s in enumerate((7, 7, 8))]
    csvs = [(tmp_path / f"d{k}" / "manifest.csv").read_text() for k in range(3)]
    assert csvs[0] == csvs[1] and csvs[0] != csvs[2]
    counts = runs[0].manifest.counts()
    assert counts["test"] == {"benign": 3, "malignant": 3}
    assert sum(counts["val"].values()) > 0 and runs[0].manifest.classes == ["benign", "malignant"]


def test_second_run_is_a_no_op(tmp_path, archive):
    data = tmp_path / "d"
    first = fetch(data, archive=archive)
    files = [data / "manifest.csv", data / "dataset.json", data / first.manifest.records[0].path]
    stamps = [p.stat().st_mtime_ns for p in files]
    again = fetch(data, archive=archive)
    assert first.changed and not again.changed
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert again.manifest.records == first.manifest.records
    r = CliRunner().invoke(main, ["fetch", "--archive", str(archive), "--data-dir", str(data)])
    assert r.exit_code == 0 and "already up to date" in r.output
    # Another option is another dataset: rebuilt.
    assert fetch(data, archive=archive, seed=1).changed


def test_cli_fetch_from_archive_prints_table_and_paths(tmp_path, archive):
    data = tmp_path / "d"
    r = CliRunner().invoke(
        main, ["fetch", "--archive", str(archive), "--data-dir", str(data), "--seed", "3"]
    )
    assert r.exit_code == 0, r.output
    for needle in ("split", "benign", "malignant", "24 images kept", "manifest.csv", "duplicates"):
        assert needle in r.output
    assert load_manifest(data).info.seed == 3


# --- Kaggle ----------------------------------------------------------------------------------


class FakeKaggle:
    """Serves a prepared zip as if downloaded; counts calls."""

    def __init__(self, archive: Path):
        self.archive = archive
        self.calls = 0

    def download(self, dataset, dest, progress=None):
        self.calls += 1
        out = Path(dest) / "skin.zip"
        shutil.copy(self.archive, out)
        if progress:
            progress(out.stat().st_size, None)
        return out


def test_fake_kaggle_download_cache_and_force(tmp_path, archive):
    client = FakeKaggle(archive)
    cache = tmp_path / "cache"
    seen = []
    report = fetch(
        tmp_path / "d",
        client=client,
        cache_dir=cache,
        on_progress=lambda stage, done, total: seen.append(stage),
    )
    cached = (
        cache
        / "fanconic"
        / "skin-cancer-malignant-vs-benign"
        / "skin-cancer-malignant-vs-benign.zip"
    )
    assert cached.is_file() and client.calls == 1 and report.downloaded
    assert len(report.manifest.records) == 24 and report.info.source.kind == "kaggle"
    assert {"download", "extract", "verify"} <= set(seen)
    again = fetch(tmp_path / "d", client=client, cache_dir=cache)
    assert client.calls == 1 and not again.downloaded and not again.changed
    forced = fetch(tmp_path / "d", client=client, cache_dir=cache, force=True)
    assert client.calls == 2 and forced.downloaded and forced.changed


def test_failed_download_keeps_no_partial_archive(tmp_path):
    class Offline:
        def download(self, dataset, dest, progress=None):
            (Path(dest) / "half.zip").write_bytes(b"PK")
            raise ConnectionError("Name or service not known")

    with pytest.raises(DataError) as err:
        fetch(tmp_path / "d", client=Offline(), cache_dir=tmp_path / "c", dataset="o/n")
    assert "ConnectionError" in str(err.value) and "KAGGLE_API_TOKEN" in str(err.value)
    assert not any((tmp_path / "c" / "o" / "n").iterdir())  # no half download left to reuse


def test_download_that_is_not_a_zip_gets_no_credentials_help(tmp_path):
    class Html:
        def download(self, dataset, dest, progress=None):
            out = Path(dest) / "page.zip"
            out.write_text("<html>sign in</html>")
            return out

    with pytest.raises(DataError) as err:
        fetch(tmp_path / "d", client=Html(), cache_dir=tmp_path / "c", dataset="o/n")
    assert "not a zip archive" in str(err.value) and "page.zip" in str(err.value)
    assert spell_options(download.CREDENTIALS_HELP) not in str(err.value)
    assert "KAGGLE_API_TOKEN" not in str(err.value)
    assert not any((tmp_path / "c" / "o" / "n").iterdir())


def _assert_credentials_error(result):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for needle in ("KAGGLE_API_TOKEN", "~/.kaggle/access_token", "~/.kaggle/kaggle.json"):
        assert needle in result.output
    assert "kaggle auth login" not in result.output  # kaggle's own help text is swallowed
    assert result.output.count("Error:") == 1


def test_missing_credentials_simulated_exit(tmp_path, monkeypatch):
    def fake_import():
        print("Kaggle's long help text… kaggle auth login")
        raise SystemExit(1)

    monkeypatch.setattr(download, "_import_kaggle", fake_import)
    r = CliRunner().invoke(
        main, ["fetch", "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c")]
    )
    _assert_credentials_error(r)


def test_missing_credentials_real_kaggle_package(tmp_path, monkeypatch):
    # No token anywhere: HOME and KAGGLE_CONFIG_DIR point at empty folders, sockets are blocked.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(
        main,
        ["fetch", "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c"), "--quiet"],
    )
    _assert_credentials_error(r)
    assert "credentials" in r.output
