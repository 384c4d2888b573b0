"""Provenance: images that are copies of a reference dataset's images (resized, squashed, re-encoded,
flipped, turned) inherit its lesion and patient ids; other images inherit nothing; per-class source
report with a warning when one source makes up a class."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from skincls.cli import main
from skincls.data.fetch import fetch
from skincls.data.references import load_reference
from skincls.data.synthetic import make_lesion
from skincls.errors import DataError

from .dermo import across, ham_rows, make_ham, zip_tree

SIZE = 192
_T = Image.Transpose
# The copies a dataset like the default Kaggle one makes of HAM10000 images.
DERIVE = [
    ("resized", lambda im: im.resize((SIZE * 3 // 4, SIZE * 3 // 4), Image.Resampling.BICUBIC)),
    ("squashed", lambda im: im.resize((SIZE * 3 // 4, SIZE * 9 // 16))),
    ("flipped", lambda im: im.transpose(_T.FLIP_LEFT_RIGHT)),
    ("turned", lambda im: im.transpose(_T.ROTATE_90)),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return make_ham(tmp_path_factory.mktemp("ref") / "ham", n=48, seed=11, size=SIZE)


@pytest.fixture(scope="module")
def copies(reference, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A class-folder dataset: every reference image, derived and re-encoded, as benign; lesions
    the reference does not hold as malignant. Returns the folder and {copy name: original id}."""
    src = tmp_path_factory.mktemp("copies") / "kaggle"
    (src / "benign").mkdir(parents=True)
    (src / "malignant").mkdir()
    origin = {}
    for k, p in enumerate(sorted(reference.rglob("*.jpg"))):
        kind, op = DERIVE[k % len(DERIVE)]
        name = f"{k:03d}_{kind}.jpg"
        op(Image.open(p).convert("RGB")).save(src / "benign" / name, quality=75)
        origin[name] = p.stem
    for k in range(16):
        lesion = make_lesion(True, np.random.default_rng([77, k]), SIZE)
        lesion.save(src / "malignant" / f"m{k:03d}.jpg", quality=75)
    return src, origin


@pytest.mark.slow
def test_copies_inherit_lesions_and_patients_with_no_false_merge(tmp_path, reference, copies):
    src, origin = copies
    ref_zip = zip_tree(reference, tmp_path / "ham.zip")
    report = fetch(tmp_path / "d", source_dir=src, reference=[ref_zip], cache_dir=tmp_path / "c")
    rows = {r["image_id"]: r for r in ham_rows(reference)}
    records = {Path(r.path).name: r for r in report.manifest.records}
    for name, original in origin.items():  # every derived copy recovered, with the right ids
        assert records[name].lesion_id == rows[original]["lesion_id"], name
        assert records[name].patient_id == rows[original]["patient_id"], name
    for name, rec in records.items():  # images the reference does not hold inherit nothing
        if name.startswith("m"):
            assert (rec.lesion_id, rec.patient_id) == ("", ""), name
            assert not rec.group.startswith(("lesion:", "patient:"))
    # Different photos of one lesion are no perceptual duplicates, yet now share a group and split.
    assert across(report.manifest.records, lambda r: r.lesion_id) == 0
    assert across(report.manifest.records, lambda r: r.patient_id) == 0
    n_lesions = len({rows[o]["lesion_id"] for o in origin.values()})
    assert len(origin) > n_lesions  # several photos per lesion: something to recover
    prov = report.info.provenance
    assert prov.matched == len(origin) and prov.ambiguous == 0
    assert prov.per_class == {"benign": {"HAM10000": 48}, "malignant": {"no match": 16}}
    (warning,) = prov.warnings
    assert warning.startswith("class benign: 48 of 48 images (100%) are copies of HAM10000")
    assert "against 0% of malignant" in warning
    # The same data without the reference: the photos of a lesion fall into separate groups.
    plain = fetch(tmp_path / "plain", source_dir=src)
    assert plain.info.groups.n_groups > report.info.groups.n_groups
    assert plain.info.provenance is None


@pytest.mark.slow
def test_reference_as_prepared_data_dir_and_cli_warning(tmp_path, reference, copies):
    src, _ = copies
    fetch(tmp_path / "ref", source_dir=reference)  # a HAM10000 data dir prepared by skincls
    ref = load_reference(tmp_path / "ref")
    assert len(ref.rows) == 48 and ref.name == "HAM10000"
    r = CliRunner().invoke(
        main,
        ["fetch", "--source-dir", str(src), "--data-dir", str(tmp_path / "d"), "--quiet",
         "--reference", str(tmp_path / "ref")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "provenance: 48 images are copies of reference images" in r.output
    assert "warning: class benign: 48 of 48 images (100%)" in " ".join(r.output.split())


def test_reference_without_ids_is_refused_before_anything_is_written(tmp_path, copies):
    src, _ = copies
    with pytest.raises(DataError, match="no metadata file with lesion or patient ids"):
        fetch(tmp_path / "d", source_dir=src, reference=[src])
    assert not (tmp_path / "d").exists()


def test_recompressed_copy_matches_and_hashes_are_cached(tmp_path, reference):
    cache = tmp_path / "cache"
    first = load_reference(reference, cache_dir=cache)
    assert len(list(cache.glob("reference-*.npz"))) == 1
    again = load_reference(reference, cache_dir=cache)
    assert again.rows == first.rows and (again.hashes == first.hashes).all()
    p = sorted(reference.rglob("*.jpg"))[0]
    buf = io.BytesIO()
    Image.open(p).convert("RGB").save(buf, "JPEG", quality=60)
    src = tmp_path / "one" / "benign"
    src.mkdir(parents=True)
    (src / "x.jpg").write_bytes(buf.getvalue())
    (tmp_path / "one" / "malignant").mkdir()
    make_lesion(True, np.random.default_rng(5), SIZE).save(tmp_path / "one/malignant/y.jpg")
    report = fetch(
        tmp_path / "d", source_dir=tmp_path / "one", reference=[reference], cache_dir=cache
    )
    rec = next(r for r in report.manifest.records if r.path.endswith("x.jpg"))
    assert rec.lesion_id == next(
        r["lesion_id"] for r in ham_rows(reference) if r["image_id"] == p.stem
    )
