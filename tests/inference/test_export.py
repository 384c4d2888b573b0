"""Export (ONNX, TorchScript) with parity checks, and the model card."""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import skincls.inference.export as export_mod
from skincls.cli import main
from skincls.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from skincls.data.dataset import build_transform, load_image
from skincls.data.splits import load_manifest
from skincls.errors import SkinclsError
from skincls.evaluation.evaluator import Evaluator
from skincls.evaluation.modelcard import NOT_RECORDED, SECTIONS, write_model_card
from skincls.inference.export import ExportError, export_model
from skincls.models.checkpoint import load_checkpoint
from skincls.training.run import train_from_config

TEMPERATURE = 2.5


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    """A tiny smallcnn checkpoint (32 px, one epoch) with a non-trivial calibration temperature."""
    out = tmp_path_factory.mktemp("export-run")
    config = RunConfig(
        data=DataConfig(data_dir=tiny_data, image_size=32),
        model=ModelConfig(arch="smallcnn", weights="none", head=(16,), dropout=0.1, freeze="none"),
        train=TrainConfig(epochs=1, batch_size=8, seed=0, device="cpu"),
        out=out,
    )
    path = train_from_config(config, progress=False).best_checkpoint
    data = load_checkpoint(path).data
    data["temperature"] = TEMPERATURE  # as evaluate's calibration would store it
    torch.save(data, path)
    return path


def _run(path, fmt, images: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images})[0]
    with warnings.catch_warnings():  # torch >= 2.10 flags torch.jit as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_passes_parity_and_matches_pytorch_on_real_images(
    checkpoint, tiny_data, tmp_path, fmt
):
    out = tmp_path / f"model.{fmt}"
    result = export_model(checkpoint, out, format=fmt)
    assert out.is_file() and result.max_abs_diff <= 1e-4
    assert result.input_shape == ("batch", 3, 32, 32) and result.temperature == TEMPERATURE

    # Three real images, prepared as the docs tell users: resize + centre crop, values in [0, 1].
    ckpt = load_checkpoint(checkpoint)
    pre = ckpt.preprocessing
    manifest = load_manifest(tiny_data)
    paths = [manifest.root / r.path for r in manifest.select("test")[:3]]
    normalised = torch.stack([build_transform(pre)(load_image(p)) for p in paths])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pre.mean, pre.std))
    images01 = (normalised * std + mean).numpy().astype(np.float32)

    probs = _run(out, fmt, images01)
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # Same numbers as the checkpoint's own model with its normalisation and temperature.
    with torch.no_grad():
        expected = torch.softmax(ckpt.build_model()(normalised) / TEMPERATURE, 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_onnx_batch_axis_is_dynamic_and_metadata_is_stored(checkpoint, tmp_path):
    import onnx

    out = tmp_path / "m.onnx"
    export_model(checkpoint, out)
    probs = _run(out, "onnx", np.random.default_rng(0).random((7, 3, 32, 32), dtype=np.float32))
    assert probs.shape == (7, 2)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["classes"] == '["benign", "malignant"]' and meta["temperature"] == str(TEMPERATURE)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cli_export_reports_parity(checkpoint, tmp_path, fmt):
    out = tmp_path / f"model.{fmt}"
    r = CliRunner().invoke(main, ["export", str(checkpoint), "--format", fmt, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file()
    diff = float(re.search(r"max abs difference (\S+)", r.output).group(1))
    assert 0 <= diff <= 1e-4


@pytest.fixture()
def perturbed(monkeypatch):
    """Make the exported model's outputs drift by 1e-3, as a broken exporter would."""
    real = export_mod._load_runner

    def drifting(path, fmt):
        run = real(path, fmt)
        return lambda x: run(x) + 1e-3

    monkeypatch.setattr(export_mod, "_load_runner", drifting)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_parity_failure_is_a_clear_error_and_writes_nothing(checkpoint, tmp_path, perturbed, fmt):
    out = tmp_path / "model.bin"
    with pytest.raises(
        ExportError, match=r"parity check failed.* by up to 0\.001 \(tolerance 0\.0001\)"
    ):
        export_model(checkpoint, out, format=fmt)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp file is left

    r = CliRunner().invoke(
        main, ["export", str(checkpoint), "--format", fmt, "--out", str(out), "--tolerance", "0"]
    )
    assert r.exit_code != 0
    assert "Error: parity check failed" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_missing_onnx_runtime_names_the_extra(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(SkinclsError, match=re.escape("pip install 'skincls[export]'")):
        export_model(checkpoint, tmp_path / "m.onnx")


@pytest.mark.slow
def test_model_card_has_every_section_filled(checkpoint, tiny_data, tmp_path):
    report = Evaluator(checkpoint, device="cpu").evaluate(tiny_data, split="test")
    path = write_model_card(
        checkpoint, report, tmp_path / "card.md", dataset=tiny_data / "dataset.json"
    )
    text = path.read_text()
    for bad in ("TODO", "None", "nan", "{", "}"):  # placeholders, Python reprs, raw dicts
        assert not re.search(rf"\b{re.escape(bad)}(?!\w)", text), bad
    bodies = re.split(r"^## ", text, flags=re.M)[1:]
    assert [b.splitlines()[0] for b in bodies] == list(SECTIONS)
    for body in bodies:
        content = [line for line in body.splitlines()[1:] if line.strip()]
        assert content and not all(NOT_RECORDED in line for line in content), body
    # Numbers from the report, the split and the checkpoint's calibration are in the card.
    assert f"**{report.n_images}** images" in text and "**test** split" in text
    assert f"{100 * report.accuracy:.1f}%" in text
    assert f"Temperature:** {TEMPERATURE}" in text
    assert "not a medical device" in text
    # Synthetic data: the default Kaggle dataset's known biases (HAM10000 benigns) are not claimed.
    assert "HAM10000" not in text


def test_cli_evaluate_writes_model_card(checkpoint, tiny_data, tmp_path):
    card = tmp_path / "card.md"
    args = ["evaluate", str(checkpoint), "--data-dir", str(tiny_data), "--model-card", str(card)]
    args += ["--calibrate", "--target-sensitivity", "0.9", "--bootstrap", "50", "--no-save"]
    args += ["--device", "cpu", "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    text = card.read_text()
    assert all(f"## {s}" in text for s in SECTIONS)
    assert "fitted on the val split" in text and "sensitivity >= 0.9 on the val split" in text
    assert "50 resamples" in text


class _Backbone(torch.nn.Module):
    """A bring-your-own backbone: (N, 3, H, W) → (N, 8, H/2, W/2) feature map."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)
        )

    def forward(self, x):
        return self.net(x)


def test_custom_backbone_exports_from_python_and_cli_says_what_is_missing(tmp_path):
    from skincls.models.checkpoint import save_checkpoint
    from skincls.models.classifier import create_model
    from skincls.preprocessing import Preprocessing

    pre = Preprocessing(resize_size=32, crop_size=32)
    model = create_model(backbone=_Backbone(), head=(4,), freeze="none", preprocessing=pre)
    path = tmp_path / "custom.pt"
    save_checkpoint(path, model, classes=["benign", "malignant"])

    result = export_model(path, tmp_path / "custom.onnx", backbone=_Backbone())
    assert result.max_abs_diff <= 1e-4 and (tmp_path / "custom.onnx").is_file()

    r = CliRunner().invoke(main, ["export", str(path), "--out", str(tmp_path / "x.onnx")])
    assert r.exit_code != 0 and "custom backbone" in r.output and "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_nan_from_the_exported_model_fails_parity(checkpoint, tmp_path, monkeypatch, fmt):
    real = export_mod._load_runner

    def nan_in_one_batch(path, f):
        run = real(path, f)
        return lambda x: run(x) * (np.nan if len(x) == 2 else 1.0)  # batch of 1 is still right

    monkeypatch.setattr(export_mod, "_load_runner", nan_in_one_batch)
    out = tmp_path / "model.bin"
    with pytest.raises(ExportError, match="outputs NaN or inf where PyTorch does not"):
        export_model(checkpoint, out, format=fmt)
    assert list(tmp_path.iterdir()) == []


def test_nan_model_is_never_exported(checkpoint, tmp_path):
    from skincls.models.checkpoint import Checkpoint

    data = load_checkpoint(checkpoint).data
    data["state_dict"] = {k: v.clone() for k, v in data["state_dict"].items()}
    data["state_dict"]["head.0.weight"].fill_(float("nan"))
    torch.save(data, tmp_path / "nan.pt")

    # A loaded Checkpoint object skips the file checks: the parity check itself must refuse.
    with pytest.raises(ExportError, match="NaN or infinite"):
        export_model(Checkpoint(tmp_path / "nan.pt", data), tmp_path / "a.pt", format="torchscript")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "NaN or inf" in r.output and "lower --lr" in " ".join(r.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]
