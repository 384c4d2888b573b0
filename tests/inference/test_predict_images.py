"""Images as every stage sees them: empty folders, decompression bombs and EXIF orientation agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from skincls.cli import main
from skincls.data.dataset import ManifestDataset, build_transform, load_image
from skincls.data.dedup import perceptual_hashes
from skincls.data.fetch import fetch
from skincls.data.ingest import inspect_image
from skincls.data.splits import load_manifest
from skincls.data.synthetic import make_lesion
from skincls.inference.cam import GradCamExplainer
from skincls.inference.predict import Predictor


def test_predict_on_a_folder_without_images_fails_and_says_so(ckpt, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no image here")
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(empty), "--device", "cpu"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output.startswith("Error: no images in folder") and str(empty) in r.output


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_images_fetch_refuses_as_bombs_are_refused_by_predict(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)
    folder = tmp_path / "imgs"
    folder.mkdir()
    # 80 × 80 = 6,400 px: between 1× and 2× the limit, where Pillow only warns and decodes anyway.
    Image.new("RGB", (80, 80), (120, 80, 60)).save(folder / "big.png")
    Image.new("RGB", (60, 60), (120, 80, 60)).save(folder / "ok.png")
    assert "decompression bomb" in inspect_image(folder / "big.png").reason  # what fetch says
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(folder), "--json", "--device", "cpu"])
    assert r.exit_code == 1, r.output
    rows = {p["path"].rsplit("/", 1)[-1]: p for p in json.loads(r.output)}
    assert "decompression bomb" in rows["big.png"]["error"] and rows["big.png"]["label"] is None
    assert rows["ok.png"]["error"] is None


def _exif_rotated(path, upright: Image.Image) -> None:
    """Save `upright` turned the way a phone stores it, with EXIF orientation 6 to turn it back."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # turned left; orientation 6 turns right
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_by_every_stage(ckpt, tmp_path, monkeypatch):
    upright = make_lesion(True, np.random.default_rng(5), size=64).crop((0, 0, 64, 40))
    src = tmp_path / "src"
    for label in ("benign", "malignant"):
        (src / label).mkdir(parents=True)
        for i in range(3):
            make_lesion(label == "malignant", np.random.default_rng([3, i, len(label)]), 48).save(
                src / label / f"{i}.jpg"
            )
    path = src / "malignant" / "phone.jpg"
    _exif_rotated(path, upright)
    with Image.open(path) as raw:
        assert raw.size == (40, 64)  # stored on its side

    # The shared loader (training, evaluation, predict, Grad-CAM) turns it upright …
    seen = load_image(path)
    assert seen.size == (64, 40)
    assert np.abs(np.asarray(seen, float) - np.asarray(upright, float)).mean() < 8  # JPEG noise
    # … fetch hashes what the loader gives …
    assert np.array_equal(inspect_image(path).hashes, perceptual_hashes(seen))
    fetch(tmp_path / "d", source_dir=src, near_dup_distance=-1, val_fraction=0, test_fraction=0)
    manifest = load_manifest(tmp_path / "d")
    pre = Predictor.from_checkpoint(ckpt, device="cpu").checkpoint.preprocessing
    ds = ManifestDataset(manifest, "train", build_transform(pre))
    i = next(k for k, r in enumerate(ds.records) if r.path.endswith("phone.jpg"))
    assert torch.equal(ds[i][0], build_transform(pre)(seen))
    # … and predict and its Grad-CAM figure see the same upright image.
    drawn = []
    real_figure = GradCamExplainer.figure

    def figure(self, image, *args, **kwargs):
        drawn.append(image)
        return real_figure(self, image, *args, **kwargs)

    monkeypatch.setattr(GradCamExplainer, "figure", figure)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    cams = tmp_path / "cams"
    (from_file,) = predictor.predict([path], cam_dir=cams)
    (from_pil,) = predictor.predict([seen])
    assert from_file.probability == pytest.approx(from_pil.probability, abs=1e-6)
    assert (cams / "phone_cam.png").is_file() and len(drawn) == 1
    assert drawn[0].size == (64, 40) and np.array_equal(np.asarray(drawn[0]), np.asarray(seen))


WIDE = (
    "too elongated: 100000×1 pixels is 100000:1, over the limit of 10:1 (resizing its short side "
    "to the model's input would blow up the long one); crop it to the lesion"
)
NONFINITE = (
    "48 of its 48 pixels are NaN or infinite (a 32-bit float image); export it again with finite "
    "values"
)


def test_predict_gives_float_images_with_nan_or_inf_an_error_row(ckpt, tmp_path):
    # A plain conversion made NaN black and inf white: "benign 0.413 / 0.399", exit 0.
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, value in (("nan.tif", np.nan), ("inf.tif", np.inf), ("half.tif", 0.5)):
        Image.fromarray(np.full((8, 6), value, dtype=np.float32)).save(folder / name)
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(folder), "--json", "--device", "cpu"])
    assert r.exit_code == 1, r.output
    rows = {p["path"].rsplit("/", 1)[-1]: p for p in json.loads(r.output)}
    for name in ("nan.tif", "inf.tif"):
        assert rows[name]["error"] == f"cannot read image {folder / name}: {NONFINITE}"
        assert rows[name]["label"] is None and rows[name]["probabilities"] is None
    assert rows["half.tif"]["error"] is None
    # The float image on the 0–1 scale is read as the 8-bit gray it stands for, not as black.
    Image.new("L", (6, 8), 128).save(tmp_path / "gray.png")
    Image.new("L", (6, 8), 0).save(tmp_path / "black.png")
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    half, gray, black = predictor.predict(
        [folder / "half.tif", tmp_path / "gray.png", tmp_path / "black.png"]
    )
    assert half.probabilities == gray.probabilities != black.probabilities


def test_predict_refuses_elongated_images_before_resizing_them(ckpt, tmp_path):
    # A 375-byte 100000×1 PNG cost +349 MiB in predict: its short side was resized to the model's.
    wide = tmp_path / "wide.png"
    Image.new("RGB", (100_000, 1), (120, 80, 60)).save(wide)
    assert wide.stat().st_size < 1000
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")

    def resize(image):
        raise AssertionError(f"an image of {image.size} reached the model's transform")

    in_memory = Image.new("RGB", (100_000, 1))
    predictor.transform = resize
    from_file, from_pil = predictor.predict([wide, in_memory])
    assert from_file.error == f"cannot read image {wide}: {WIDE}"
    assert from_pil.error == f"cannot read image <image 1>: {WIDE}"
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(wide), "--device", "cpu"])
    assert r.exit_code == 1 and "100000×1 pixels is 100000:1, over the limit of 10:1" in r.output


def test_images_in_memory_are_checked_as_files_are(ckpt):
    nan = Image.fromarray(np.full((8, 6), np.nan, dtype=np.float32))
    (pred,) = Predictor.from_checkpoint(ckpt, device="cpu").predict([nan])
    assert pred.error == f"cannot read image <image 0>: {NONFINITE}" and pred.label is None
