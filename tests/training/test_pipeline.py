"""Python API: config merging, reproducible training, checkpoints, evaluation and prediction."""

from __future__ import annotations

import json

import pytest
import torch

import skincls
from skincls import RunConfig, load_config
from skincls.data.dataset import build_transform, load_image
from skincls.data.synthetic import generate_synthetic
from skincls.errors import CheckpointError, ConfigError
from skincls.models.checkpoint import load_checkpoint


def _config(data_dir, out, **train):
    return RunConfig.model_validate(
        {
            "data": {"data_dir": data_dir, "image_size": 32},
            "model": {"arch": "smallcnn", "weights": "none", "freeze": "none", "head": [16]},
            "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "seed": 5, **train},
            "out": out,
        }
    )


def test_public_api():
    for name in (
        "create_model",
        "Trainer",
        "Evaluator",
        "RunConfig",
        "TrainConfig",
        "ModelConfig",
        "DataConfig",
        "Predictor",
        "fetch",
    ):
        assert name in skincls.__all__ and hasattr(skincls, name)


def test_config_file_merges_with_overrides(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": {"epochs": 3, "lr": 0.01}, "model": {"arch": "smallcnn"}}))
    cfg = load_config(f, {"train.epochs": 5, "train.seed": None})
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.01 and cfg.model.arch == "smallcnn"
    assert cfg.train.seed == 0  # None override = option not given


@pytest.mark.parametrize("text", ["train: [1, 2]", "model:\n  arch: 3\n  colour: red\n", "{"])
def test_invalid_config_raises_config_error(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        load_config(f)


@pytest.mark.slow
def test_same_seed_gives_identical_history(tiny_data, tmp_path):
    a = skincls.train_from_config(_config(tiny_data, tmp_path / "a"), progress=False)
    b = skincls.train_from_config(_config(tiny_data, tmp_path / "b"), progress=False)
    strip = lambda h: [{k: v for k, v in vars(e).items() if k != "seconds"} for e in h.epochs]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    c = skincls.train_from_config(_config(tiny_data, tmp_path / "c", seed=6), progress=False)
    assert strip(c.history) != strip(a.history)


@pytest.mark.slow
def test_checkpoint_is_self_describing_and_safe(tiny_data, tmp_path):
    result = skincls.train_from_config(_config(tiny_data, tmp_path / "r"), progress=False)
    raw = torch.load(result.best_checkpoint, weights_only=True)  # must not need unpickling
    assert raw["classes"] == ["benign", "malignant"]
    assert raw["preprocessing"]["crop_size"] == 32
    assert raw["model"]["arch"] == "smallcnn"
    ckpt = load_checkpoint(result.best_checkpoint)
    model = ckpt.build_model()
    x = torch.randn(2, 3, 32, 32)
    expected = {k: v for k, v in raw["state_dict"].items()}
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k])
    assert model(x).shape == (2, 2)


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a skincls checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.slow
def test_evaluator_and_predictor(tiny_data, tmp_path):
    result = skincls.train_from_config(_config(tiny_data, tmp_path / "r"), progress=False)
    best = result.best_checkpoint
    report = skincls.Evaluator(best, device="cpu", precision="fp32").evaluate(tiny_data, "test")
    manifest = skincls.load_manifest(tiny_data)
    records = manifest.select("test")
    assert report.split == "test" and report.n_images == len(records)
    # The saved model, run by hand over the test images, gives the same per-class counts.
    ckpt = load_checkpoint(result.best_checkpoint)
    model, transform = ckpt.build_model().eval(), build_transform(ckpt.preprocessing)
    x = torch.stack([transform(load_image(tiny_data / r.path)) for r in records])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    pred, y = probs.argmax(1), torch.tensor([manifest.label_index(r.label) for r in records])
    assert [(c.name, c.correct, c.total) for c in report.per_class] == [
        (name, int(((pred == k) & (y == k)).sum()), int((y == k).sum()))
        for k, name in enumerate(manifest.classes)
    ]
    assert report.lines()[-1].startswith("Test Accuracy (Overall)")

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 nope")
    good = tiny_data / records[0].path
    predictor = skincls.Predictor.from_checkpoint(best, device="cpu", precision="fp32")
    preds = predictor.predict([good, broken])
    assert preds[0].error is None
    assert list(preds[0].probabilities.values()) == pytest.approx(probs[0].tolist(), abs=1e-6)
    assert preds[1].error and preds[1].label is None


def test_synthetic_generator_is_seeded(tmp_path):
    a = generate_synthetic(tmp_path / "a", 12, seed=4, size=48)
    generate_synthetic(tmp_path / "b", 12, seed=4, size=48)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(files) == 12 and sum(a.values()) == 12
    assert {f.parts[0] for f in files} == {"train", "test"}
    assert {f.parts[1] for f in files} == {"benign", "malignant"}
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


@pytest.mark.slow
def test_vgg16_default_is_the_original_recipe():
    model = skincls.create_model("vgg16", weights="none")
    pre = model.preprocessing
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 104_863_234
    assert [type(m).__name__ for m in model.head] == [
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert model.head[0].in_features == 25088 and model.head[-1].out_features == 2
    assert pre.crop_size == 224


@pytest.mark.slow
def test_run_files_record_wall_time_and_each_phase_model_config(tiny_data, tmp_path):
    cfg = _config(tiny_data, tmp_path / "r", epochs=1, finetune_epochs=1)
    cfg.model.freeze = "backbone"
    result = skincls.train_from_config(cfg, progress=False)
    history = json.loads((result.run_dir / "history.json").read_text())
    assert history["wall_seconds"] > 0 and len(history["epochs"]) == 2
    assert RunConfig.model_validate_json((result.run_dir / "config.json").read_text()) == cfg
    last = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["model"]["freeze"] == "none"  # set at the finetune start
    assert last["preprocessing"]["crop_size"] == 32
