"""Checkpoints as safetensors + JSON: every field round-trips, nothing is unpickled, and evaluate,
predict and serve answer exactly as with the `.pt`."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from click.testing import CliRunner

from skincls.cli import main
from skincls.errors import CheckpointError, ModelError
from skincls.models.checkpoint import (
    convert_checkpoint,
    load_checkpoint,
    save_checkpoint,
    update_checkpoint,
)
from skincls.models.classifier import create_model

from ..serve._support import image_bytes, needs

safetensors = needs("safetensors", "safetensors checkpoints need: pip install 'skincls[timm]'")


@pytest.fixture()
def pair(ckpt, tmp_path):
    """The conftest checkpoint with calibration, NaN metrics and a nested field; and its copy."""
    metrics = {
        "test": {"accuracy": 0.75, "roc_auc": math.nan, "confusion_matrix": [[3, 1], [0, 4]]}
    }
    labels = {"task": "binary", "map": {"mel": "malignant", "nv": "benign"}, "note": "ü ✓"}
    update_checkpoint(ckpt, threshold=0.4123, temperature=1.37, metrics=metrics, labels=labels)
    out = tmp_path / "shared" / "model.safetensors"
    convert_checkpoint(ckpt, out)
    return ckpt, out


def test_round_trip_keeps_every_field_and_tensor(pair):
    pt, st = pair
    a, b = load_checkpoint(pt), load_checkpoint(st)
    assert b.file_format == "safetensors" and a.file_format == "torch"
    assert set(a.data) == set(b.data)
    for key in a.data:
        if key != "state_dict":  # NaN != NaN: compare as JSON text
            assert json.dumps(a.data[key]) == json.dumps(b.data[key]), key
    assert math.isnan(b.metrics["test"]["roc_auc"]) and b.data["labels"]["note"] == "ü ✓"
    assert (b.threshold, b.temperature, b.preprocessing) == (
        a.threshold,
        a.temperature,
        a.preprocessing,
    )
    sa, sb = a.data["state_dict"], b.data["state_dict"]
    assert list(sa) and set(sa) == set(sb)
    for name, t in sa.items():
        assert t.dtype == sb[name].dtype and torch.equal(t, sb[name]), name


def test_the_file_is_plain_safetensors_with_json_metadata(pair):
    _, st = pair
    with safetensors.safe_open(str(st), framework="pt") as fh:
        header = fh.metadata()
        names = set(fh.keys())
    assert header["format"] == "pt"
    meta = json.loads(header["skincls"])
    assert meta["format"] == "skincls-checkpoint-v1" and meta["classes"] == ["benign", "malignant"]
    assert "state_dict" not in meta and names == set(load_checkpoint(st).data["state_dict"])


def test_loading_a_safetensors_checkpoint_unpickles_nothing(pair, monkeypatch):
    _, st = pair

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ckpt = load_checkpoint(st)
    model = ckpt.build_model()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(CheckpointError, match="pickle used"):  # the patch does bite on a .pt
        load_checkpoint(pair[0])


def test_evaluate_predict_and_serve_answer_the_same(pair, tiny_data):
    from skincls.inference.predict import Predictor

    outputs = []
    images = sorted((tiny_data / "images" / "test").rglob("*.jpg"))
    for path in pair:
        r = CliRunner().invoke(
            main, ["evaluate", str(path), "--data-dir", str(tiny_data), "--json", "--no-save"]
        )
        assert r.exit_code == 0, r.output
        report = json.loads(r.stdout)
        probs = [p.probabilities for p in Predictor.from_checkpoint(path, "cpu").predict(images)]
        outputs.append((report, probs, _served(path)))
    assert outputs[0] == outputs[1]


def _served(path):
    needs("starlette", "skincls serve needs: pip install 'skincls[serve]'")
    from PIL import Image

    from skincls.serve.service import ModelService

    service = ModelService.from_checkpoint(path, device="cpu")
    import io

    image = Image.open(io.BytesIO(image_bytes(1)))
    [result] = service.predict(["a.png"], [image], cam=False)
    return result.probabilities


def test_evaluate_save_keeps_the_safetensors_format(pair, tiny_data):
    _, st = pair
    args = ["evaluate", str(st), "--data-dir", str(tiny_data), "--save", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert st.read_bytes()[8:9] == b"{"  # still a safetensors file
    assert load_checkpoint(st).file_format == "safetensors"
    assert "test" in load_checkpoint(st).metrics


def test_export_format_safetensors(ckpt, tmp_path):
    out = tmp_path / "m.safetensors"
    r = CliRunner().invoke(
        main, ["export", str(ckpt), "--format", "safetensors", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "no pickle" in r.output and "max abs difference 0 <=" in r.output
    r = CliRunner().invoke(main, ["export", str(ckpt), "--format", "safetensors", "--out", "x.pt"])
    assert r.exit_code == 1
    assert "must end in .safetensors" in r.output and "another --format" in r.output


def test_resume_state_is_left_out_and_never_written(ckpt, tmp_path):
    model = create_model("smallcnn", weights="none", head=(16,), dropout=0.0, freeze="none")
    out = tmp_path / "last.safetensors"
    with pytest.raises(CheckpointError, match="holds no resume state"):
        save_checkpoint(out, model, classes=["a", "b"], training_state={"epoch": 1})
    assert not out.exists()
    last = tmp_path / "last.pt"
    save_checkpoint(last, model, classes=["a", "b"], training_state={"epoch": 1})
    assert "training_state" not in convert_checkpoint(last, out).data


def test_what_json_cannot_hold_is_refused_in_one_line(tmp_path):
    model = create_model("smallcnn", weights="none", head=(16,), dropout=0.0, freeze="none")
    for name in ("m.pt", "m.safetensors"):
        with pytest.raises(CheckpointError) as err:
            save_checkpoint(tmp_path / name, model, classes=["a", "b"], note={1j})
        assert str(err.value).startswith(f"refusing to write checkpoint {tmp_path / name}: note ")
        assert not (tmp_path / name).exists()


def test_weights_only_or_damaged_safetensors_files_are_named(pair, tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="weights only, not a skincls checkpoint"):
        load_checkpoint(plain)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(pair[1].read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(cut)


def test_a_checkpoint_given_as_timm_weights_is_named(pair):
    needs("timm", "timm backbones need: pip install 'skincls[timm]'")
    with pytest.raises(ModelError, match="is a skincls checkpoint, not a state dict"):
        create_model("timm/test_efficientnet", weights=str(pair[1]))


def test_an_ensemble_checkpoint_converts_and_answers_the_same(ckpt, tmp_path):
    from skincls.experiments.ensemble import create_ensemble

    second = tmp_path / "second.pt"
    second.write_bytes(ckpt.read_bytes())
    update_checkpoint(second, temperature=2.0)
    ens = create_ensemble([ckpt, second], tmp_path / "ensemble.pt", threshold=0.3)
    copy = convert_checkpoint(ens, tmp_path / "ensemble.safetensors")
    assert copy.is_ensemble and copy.threshold == 0.3
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ens.build_model()(images), copy.build_model()(images))


def test_a_damaged_safetensors_weights_file_is_one_error(tmp_path):
    needs("timm", "timm backbones need: pip install 'skincls[timm]'")
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(100)}, str(path))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ModelError, match=r"cannot read weights file .* as a state dict"):
        create_model("timm/test_efficientnet", weights=str(path))
