"""The pieces of the winners' recipe: strong augmentation, weight EMA, layer-wise LR decay."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import skincls
from skincls import RunConfig
from skincls.data.dataset import build_transform, is_deterministic
from skincls.errors import ConfigError
from skincls.models.checkpoint import load_checkpoint
from skincls.preprocessing import Preprocessing
from skincls.training.callbacks import Callback
from skincls.training.contract import Phase, param_groups_for, plan_phases


def _image() -> Image.Image:
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def test_strong_policy_is_random_and_has_the_winners_steps():
    pre = Preprocessing(resize_size=36, crop_size=32, interpolation="bicubic")  # as timm's
    strong = build_transform(pre, train=True, augment=True, policy="strong")
    names = {type(t).__name__ for t in strong.transforms}
    assert {"RandomErasing", "RandomVerticalFlip", "ColorJitter", "RandomApply"} <= names
    assert not is_deterministic(strong)
    torch.manual_seed(0)
    a, b = strong(_image()), strong(_image())
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b)
    # Evaluation ignores the policy: the same centre crop as always.
    plain = build_transform(pre)
    assert torch.equal(build_transform(pre, policy="strong")(_image()), plain(_image()))


def _run_config(data_dir, out, **train):
    return RunConfig.model_validate(
        {
            "data": {"data_dir": data_dir, "image_size": 32},
            "model": {"arch": "smallcnn", "weights": "none", "freeze": "none", "head": [16]},
            "train": {
                "epochs": 3,
                "batch_size": 8,
                "device": "cpu",
                "seed": 3,
                "checkpoint_interval": 0,
                "lr": 3e-3,
                **train,
            },
            "out": out,
        }
    )


class _ManualEMA(Callback):
    """Averages the raw weights after every step, by the formula, and keeps it per epoch."""

    def __init__(self, decay: float):
        self.decay, self.t, self.avg, self.per_epoch = decay, 0, None, {}

    def on_batch_end(self, trainer, loss, accuracy):
        state = {k: v.detach().double().clone() for k, v in trainer.model.state_dict().items()}
        d = min(self.decay, (1 + self.t) / (10 + self.t))
        if self.avg is None:
            self.avg = state
        self.avg = {k: d * self.avg[k] + (1 - d) * state[k] for k in state}
        self.t += 1

    def on_epoch_end(self, trainer, record, improved):
        self.per_epoch[record.epoch] = {k: v.clone() for k, v in self.avg.items()}


def test_best_pt_holds_the_ema_weights_not_the_raw_ones(tiny_data, tmp_path):
    manual = _ManualEMA(0.9)
    raw = skincls.train_from_config(
        _run_config(tiny_data, tmp_path / "raw"), progress=False, callbacks=[manual]
    )
    ema = skincls.train_from_config(
        _run_config(tiny_data, tmp_path / "ema", ema_decay=0.9), progress=False
    )
    best = load_checkpoint(ema.best_checkpoint).data
    expected = manual.per_epoch[best["epoch"]]
    for k, v in best["state_dict"].items():
        if v.is_floating_point():
            assert torch.allclose(v.double(), expected[k], atol=1e-5), k
    # The raw weights (the run without EMA trains the same steps) are another model.
    raw_last = load_checkpoint(raw.run_dir / "last.pt").data["state_dict"]
    ema_last = load_checkpoint(ema.run_dir / "last.pt").data
    assert any(not torch.allclose(raw_last[k], v) for k, v in ema_last["state_dict"].items())
    # last.pt's training state holds the raw weights training continues from.
    spare = ema_last["training_state"]["ema"]["spare"]
    assert all(torch.allclose(raw_last[k], spare[k], atol=1e-6) for k in raw_last)
    assert any("weight EMA (decay 0.9)" in n for n in ema.history.notes)


class _Crash(Callback):
    def on_epoch_end(self, trainer, record, improved):
        if record.epoch == 2:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.slow
def test_resume_restores_the_ema_state(tiny_data, tmp_path):
    full = skincls.train_from_config(
        _run_config(tiny_data, tmp_path / "full", ema_decay=0.9), progress=False
    )
    run = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        skincls.train_from_config(
            _run_config(tiny_data, run, ema_decay=0.9), progress=False, callbacks=[_Crash()]
        )
    skincls.train_from_config(
        _run_config(tiny_data, run, ema_decay=0.9), progress=False, resume=True
    )
    a, b = load_checkpoint(run / "last.pt").data, load_checkpoint(full.run_dir / "last.pt").data
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    sa, sb = a["training_state"]["ema"], b["training_state"]["ema"]
    assert sa["updates"] == sb["updates"] > 0
    assert all(torch.equal(sa["spare"][k], v) for k, v in sb["spare"].items())


def test_layer_decay_gives_each_backbone_stage_its_lr():
    model = skincls.create_model("smallcnn", weights="none", head=(16,), freeze="none")
    n = len(model.stages)
    assert n >= 2
    phase = Phase("finetune", 2, 3, "none", lr=1e-2, backbone_lr_mult=0.1, layer_decay=0.5)
    groups = param_groups_for(model, phase)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == pytest.approx(1e-2)
    for i in range(n):
        assert lrs[f"stage{i}"] == pytest.approx(1e-3 * 0.5 ** (n - 1 - i))
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters()}  # every parameter, once
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    plain = param_groups_for(model, Phase("finetune", 2, 3, "none", lr=1e-2, backbone_lr_mult=0.1))
    assert [g["name"] for g in plain] == ["head", "backbone"]


def test_layer_decay_reaches_the_finetune_phase_optimizer(tiny_data, tmp_path):
    cfg = _run_config(tiny_data, tmp_path / "r", epochs=1, finetune_epochs=1, layer_decay=0.5)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"freeze": "backbone"})})
    phases = plan_phases(cfg.train, skincls.create_model("smallcnn", weights="none"))
    assert phases[1].layer_decay == 0.5 and phases[0].layer_decay == 1.0
    seen = {}

    class Lrs(Callback):
        def on_epoch_end(self, trainer, record, improved):
            seen[trainer.phase] = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}

    skincls.train_from_config(cfg, progress=False, callbacks=[Lrs()])
    top = 3e-3 * 0.1
    assert seen["finetune"]["stage1"] == pytest.approx(top * 0.5 ** (len(seen["finetune"]) - 3))
    assert seen["finetune"]["head"] == pytest.approx(3e-3)
    assert set(seen["head"]) == {"head"}


def test_strong_policy_without_augment_is_refused(tiny_data, tmp_path):
    cfg = _run_config(tiny_data, tmp_path / "r")
    cfg.data.augment_policy = "strong"
    with pytest.raises(ConfigError, match=r"needs data\.augment=True"):
        skincls.train_from_config(cfg, progress=False)
    assert not (tmp_path / "r").exists()
