"""Precision: bf16 where it helps, recorded wherever results are kept (history, checkpoint, feature cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import skincls
from skincls import TrainConfig
from skincls.data.dataset import ManifestDataset, build_transform
from skincls.models.checkpoint import load_checkpoint, save_checkpoint
from skincls.runtime import seed_everything
from skincls.training.callbacks import ModelCheckpoint
from skincls.training.features import extract_features


def _split(data_dir, model, split, size=32):
    pre = model.preprocessing.with_size(size)
    return ManifestDataset(skincls.load_manifest(data_dir), split, build_transform(pre))


@pytest.mark.slow
def test_bf16_features_within_tolerance_of_fp32(tiny_data):
    seed_everything(0)
    model = skincls.create_model("vgg11", weights="none", head=(8,))  # a real conv stack
    val = _split(tiny_data, model, "val", size=64)
    cpu = torch.device("cpu")
    f32, _ = extract_features(model, val, device=cpu)
    bf16, _ = extract_features(model, val, device=cpu, autocast_dtype=torch.bfloat16)
    rel = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
    cos = (bf16 * f32).sum(1) / (np.linalg.norm(bf16, axis=1) * np.linalg.norm(f32, axis=1))
    assert 0 < rel < 0.02  # bf16 really ran (not bit-identical) and stayed close
    assert cos.min() > 0.999


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_recorded_in_history_checkpoint_and_cache(tiny_data, tmp_path, precision):
    seed_everything(0)
    model = skincls.create_model("smallcnn", weights="none", head=(16,), freeze="backbone")
    train, val = _split(tiny_data, model, "train"), _split(tiny_data, model, "val")

    def save(path, snapshot, extra, state):
        save_checkpoint(path, snapshot, classes=train.classes, training_state=state, **extra)

    cfg = TrainConfig(
        epochs=1, batch_size=8, device="cpu", cache_features="disk", precision=precision
    )
    callbacks = [ModelCheckpoint(tmp_path, save)]
    history = skincls.Trainer(model, cfg, cache_dir=tmp_path / "cache", callbacks=callbacks).fit(
        train, val
    )
    expected = dict.fromkeys(("requested", "features", "train", "inference"), precision)
    assert history.precision == expected
    assert load_checkpoint(tmp_path / "best.pt").data["precision"] == expected
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert [m["precision"] for m in metas] == [precision, precision]  # train and val features
    assert any(f"precision {precision}" in note for note in history.notes)  # printed too
