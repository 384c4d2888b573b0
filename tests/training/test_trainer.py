"""Trainer: feature cache equivalence and reuse, resume after a crash, atomic checkpoints, early
stopping, class weights, device/precision choice."""

from __future__ import annotations

import copy
import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import skincls
from skincls import RunConfig, TrainConfig, Trainer, runtime
from skincls.data.dataset import ManifestDataset, build_transform
from skincls.errors import ConfigError
from skincls.models.checkpoint import load_checkpoint
from skincls.runtime import plan_precision, seed_everything
from skincls.training.callbacks import Callback, HistoryWriter, ModelCheckpoint
from skincls.training.history import History
from skincls.training.optim import balanced_class_weights, build_optimizer


def _frozen_model(seed: int = 0):
    seed_everything(seed)
    model = skincls.create_model(
        "smallcnn", weights="none", head=(16,), dropout=0.3, freeze="backbone"
    )
    return model, model.preprocessing


def _datasets(data_dir, pre, augment=False):
    manifest = skincls.load_manifest(data_dir)
    pre = pre.with_size(32)
    train = ManifestDataset(manifest, "train", build_transform(pre, train=True, augment=augment))
    return train, ManifestDataset(manifest, "val", build_transform(pre))


def _cfg(**kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 8, "device": "cpu", "seed": 2, **kw})


def _metrics(history):
    return [
        (e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy, e.lr) for e in history.epochs
    ]


class _CountCalls:
    """Counts images the backbone sees, through a forward hook."""

    def __init__(self, model):
        self.images = 0
        model.backbone.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.images += len(inputs[0])


def test_cached_training_equals_uncached(tiny_data):
    model, pre = _frozen_model()
    twin = copy.deepcopy(model)
    train, val = _datasets(tiny_data, pre)
    cached = Trainer(model, _cfg(cache_features="memory")).fit(train, val)
    counter = _CountCalls(twin)
    plain = Trainer(twin, _cfg(cache_features="off")).fit(train, val)
    assert cached.cache == {"train": "computed", "val": "computed"}
    assert plain.cache == {"train": "off", "val": "off"}
    # Uncached: the backbone runs on every training and validation image in every epoch.
    assert counter.images == 3 * (len(train) + len(val))
    for a, b in zip(_metrics(cached), _metrics(plain), strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    for (name, p), q in zip(model.head.state_dict().items(), twin.head.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name


@pytest.mark.slow
def test_cache_switches_off_with_augmentation(tiny_data):
    model, pre = _frozen_model()
    train, val = _datasets(tiny_data, pre, augment=True)
    history = Trainer(model, _cfg(epochs=1)).fit(train, val)
    assert history.cache == {"train": "off", "val": "computed"}
    assert any("augmentation" in n and "train" in n for n in history.notes)


def _stage_params(model) -> list[set[str]]:
    names = {id(p): n for n, p in model.backbone.named_parameters()}
    return [{names[id(p)] for m in stage for p in m.parameters()} for stage in model.stages]


@pytest.mark.slow
def test_cache_switches_off_while_fine_tuning_and_only_the_last_stage_trains(tiny_data):
    model, pre = _frozen_model()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train, val = _datasets(tiny_data, pre)
    history = Trainer(model, _cfg(epochs=1, finetune_epochs=1, unfreeze=1)).fit(train, val)
    assert [e.phase for e in history.epochs] == ["head", "finetune"]
    assert any("finetune phase" in n and "trainable" in n for n in history.notes)
    *frozen, last = _stage_params(model)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == last and len(frozen) > 1  # unfreeze=1: the last stage, nothing else
    after = model.backbone.state_dict()
    assert all(torch.equal(before[n], after[n]) for stage in frozen for n in stage)
    assert any(not torch.equal(before[n], after[n]) for n in last)  # fine-tuned


@pytest.mark.slow
def test_disk_cache_is_reused(tiny_data, tmp_path):
    model, pre = _frozen_model()
    twin = copy.deepcopy(model)
    train, val = _datasets(tiny_data, pre)
    first = _CountCalls(model)
    h1 = Trainer(model, _cfg(epochs=2, cache_features="disk"), cache_dir=tmp_path).fit(train, val)
    assert first.images == len(train) + len(val)  # once per image, not per epoch
    assert h1.cache == {"train": "computed+disk", "val": "computed+disk"}
    assert len(list(tmp_path.glob("*.npy"))) == 4 and not list(tmp_path.glob("*.tmp"))
    second = _CountCalls(twin)
    h2 = Trainer(twin, _cfg(epochs=2, cache_features="auto"), cache_dir=tmp_path).fit(train, val)
    assert second.images == 0 and h2.cache == {"train": "disk", "val": "disk"}
    for a, b in zip(_metrics(h2), _metrics(h1), strict=True):
        assert a == pytest.approx(b)


def _run_config(data_dir, out, **train):
    return RunConfig.model_validate(
        {
            "data": {"data_dir": data_dir, "image_size": 32, "augment": True},
            "model": {"arch": "smallcnn", "weights": "none", "freeze": "none", "head": [16]},
            "train": {
                "epochs": 3,
                "batch_size": 8,
                "device": "cpu",
                "seed": 3,
                "schedule": "cosine",
                "warmup_epochs": 1,
                "patience": 3,
                **train,
            },
            "out": out,
        }
    )


class _Crash(Callback):
    def __init__(self, at: int):
        self.at = at

    def on_epoch_end(self, trainer, record, improved):
        if record.epoch == self.at:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run(tiny_data, tmp_path):
    full = skincls.train_from_config(_run_config(tiny_data, tmp_path / "full"), progress=False)
    run = tmp_path / "crashed"
    every_epoch = {"checkpoint_interval": 0}  # resume state at each epoch's end
    with pytest.raises(KeyboardInterrupt):
        skincls.train_from_config(
            _run_config(tiny_data, run, **every_epoch), progress=False, callbacks=[_Crash(2)]
        )
    assert load_checkpoint(run / "last.pt").data["epoch"] == 2
    resumed = skincls.train_from_config(
        _run_config(tiny_data, run, **every_epoch), progress=False, resume=True
    )
    assert [e.epoch for e in resumed.history.epochs] == [1, 2, 3]
    strip = lambda h: [{k: v for k, v in vars(e).items() if k != "seconds"} for e in h.epochs]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    a = load_checkpoint(run / "last.pt").data["state_dict"]
    b = load_checkpoint(tmp_path / "full" / "last.pt").data["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    for name in ("history.json", "history.csv", "training_curves.png"):
        assert (run / name).is_file()
    raw = torch.load(run / "last.pt", weights_only=True)  # resume state needs no unpickling
    assert raw["training_state"]["epoch"] == 3


@pytest.mark.slow
def test_interrupted_write_keeps_old_best(tiny_data, tmp_path, monkeypatch):
    cfg = _run_config(tiny_data, tmp_path, epochs=1, patience=None)
    skincls.train_from_config(cfg, progress=False)
    before = (tmp_path / "best.pt").read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    model = skincls.create_model("smallcnn", weights="none", head=(16,), freeze="none")
    writer = ModelCheckpoint(
        tmp_path,
        lambda path, net, extra, state: skincls.save_checkpoint(
            path, net, classes=["benign", "malignant"], **extra
        ),
        last=False,
    )
    record = skincls.History.from_dict({"epochs": [_record(2)]}).epochs[0]
    with pytest.raises(OSError, match="disk full"):
        writer.on_epoch_end(SimpleNamespace(model=model, history=History()), record, improved=True)
    assert (tmp_path / "best.pt").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "best.pt").data["epoch"] == 1


def _record(epoch):
    return {
        "epoch": epoch,
        "phase": "train",
        "train_loss": 0.5,
        "train_accuracy": 0.5,
        "val_loss": 0.1,
        "val_accuracy": 1.0,
        "lr": 1e-3,
        "seconds": 0.0,
    }


def _tensor_data(n_pos=4, n_neg=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_pos + n_neg, 8, generator=g)
    y = torch.tensor([1] * n_pos + [0] * n_neg)
    return TensorDataset(x, y)


def test_early_stopping_stops():
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    data = _tensor_data()
    # A vanishing learning rate leaves the weights, hence the validation loss, exactly unchanged.
    cfg = TrainConfig(epochs=10, lr=1e-30, patience=2, device="cpu")
    trainer = Trainer(model, cfg, callbacks=[skincls.training.callbacks.EarlyStopping(2)])
    history = trainer.fit(data, data)
    assert len(history.epochs) == 3 and history.best_epoch == 1
    assert history.stopped_early == ["train"]


def test_class_weights_change_the_loss():
    data = _tensor_data()
    assert balanced_class_weights(data.tensors[1].tolist(), 2).tolist() == pytest.approx(
        [16 / 24, 2]
    )
    losses = {}
    for weights in ("none", "balanced"):
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=1, batch_size=16, class_weights=weights, device="cpu")
        losses[weights] = Trainer(nn.Linear(8, 2), cfg).fit(data).epochs[0].train_loss
    torch.manual_seed(0)
    logits = nn.Linear(8, 2)(data.tensors[0])
    w = torch.tensor([16 / 24, 16 / 8])
    expected = nn.functional.cross_entropy(logits, data.tensors[1], weight=w).item()
    assert losses["balanced"] == pytest.approx(expected, rel=1e-5)
    assert not math.isclose(losses["none"], losses["balanced"], rel_tol=1e-3)


def test_precision_plan(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    auto = plan_precision("auto", cpu)  # bf16 only where measured to help on CPU
    assert (auto.features, auto.train, auto.inference) == ("bf16", "fp32", "bf16")
    assert auto.dtype("features") is torch.bfloat16 and auto.dtype("train") is None
    assert "features bf16, train fp32" in auto.describe()
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert plan_precision("auto", cpu).to_dict() == {
        "requested": "auto", "features": "fp32", "train": "fp32", "inference": "fp32"
    }  # fmt: skip
    assert plan_precision("bf16", cpu).train == "bf16"  # asked for: every phase
    with pytest.raises(ConfigError, match="precision='fp16' needs a CUDA device"):
        plan_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="unknown precision"):
        plan_precision("half", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert set(plan_precision("auto", cuda).to_dict().values()) == {"auto", "bf16"}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert plan_precision("auto", cuda).train == "fp16"
    with pytest.raises(ConfigError, match="no bf16"):
        plan_precision("bf16", cuda)


def test_legacy_amp_key_maps_to_precision():
    assert TrainConfig.model_validate({"amp": False}).precision == "fp32"
    assert TrainConfig.model_validate({"amp": None}).precision == "auto"


def test_optimizer_prefers_fused_and_falls_back(monkeypatch):
    params = [nn.Parameter(torch.zeros(3))]
    opt = build_optimizer([{"params": params}], TrainConfig())
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"]
    real = torch.optim.AdamW.__init__

    def no_fused(self, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("fused not supported here")
        real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", no_fused)
    opt = build_optimizer([{"params": params}], TrainConfig(weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["foreach"]


def test_atomic_write_keeps_old_file_on_error_and_uses_umask_permissions(tmp_path):
    import os

    from skincls.atomic import atomic_write

    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp litter

    mask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "g.bin") as fh:
            fh.write(b"new")
    finally:
        os.umask(mask)
    assert (tmp_path / "g.bin").stat().st_mode & 0o777 == 0o644


def test_plateau_without_val_follows_train_loss():
    """No val set: the trainer monitors train loss, so the plateau schedule must minimise it even
    with monitor="val_accuracy" (which, taken literally, would cut the LR while the loss falls)."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        epochs=6, batch_size=16, lr=1e-2, schedule="plateau", monitor="val_accuracy", device="cpu"
    )
    history = Trainer(nn.Linear(8, 2), cfg).fit(_tensor_data())
    losses = [e.train_loss for e in history.epochs]
    assert all(b < a for a, b in itertools.pairwise(losses))  # one full-batch step per epoch
    assert [e.lr for e in history.epochs] == [1e-2] * 6
    assert history.best_epoch == 6


def test_background_checkpoint_writes_the_epoch_end_snapshot(tmp_path):
    """Both files come from one CPU snapshot taken at the epoch's end: later changes to the live
    weights, config and optimizer state (the next epoch, a phase start) don't reach them."""
    model, _ = _frozen_model()
    opt = torch.optim.Adam(model.head.parameters())
    model.head(torch.randn(2, model.head[0].in_features)).sum().backward()
    opt.step()
    trainer = SimpleNamespace(
        history=History(),
        model=model,
        state_dict=lambda: {"epoch": 1, "optimizer": opt.state_dict()},
    )
    writer = ModelCheckpoint(
        tmp_path,
        lambda path, snap, extra, state: skincls.save_checkpoint(
            path, snap, classes=["benign", "malignant"], training_state=state, **extra
        ),
        background=True,
    )
    record = skincls.History.from_dict({"epochs": [_record(1)]}).epochs[0]
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    exp_avg = opt.state_dict()["state"][0]["exp_avg"].clone()
    writer.on_epoch_end(trainer, record, improved=True)
    with torch.no_grad():  # training goes on while the thread writes
        for p in model.parameters():
            p.add_(1.0)
    opt.state[next(iter(model.head.parameters()))]["exp_avg"].add_(1.0)
    skincls.models.classifier.set_freeze(model, "none")
    writer.on_fit_end(trainer, None)
    for name in ("best.pt", "last.pt"):
        raw = torch.load(tmp_path / name, weights_only=True)
        assert all(torch.equal(raw["state_dict"][k], v) for k, v in expected.items()), name
        assert raw["model"]["freeze"] == "backbone" and raw["epoch"] == 1
    assert "training_state" not in torch.load(tmp_path / "best.pt", weights_only=True)
    state = torch.load(tmp_path / "last.pt", weights_only=True)["training_state"]
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], exp_avg)


def test_backbone_hashed_once_per_phase_and_cache_files_use_umask(tiny_data, tmp_path, monkeypatch):
    import os

    import skincls.training.features
    import skincls.training.trainer

    calls = []
    real = skincls.training.features.backbone_fingerprint

    def counting(model):
        calls.append(1)
        return real(model)

    monkeypatch.setattr(skincls.training.features, "backbone_fingerprint", counting)
    monkeypatch.setattr(skincls.training.trainer, "backbone_fingerprint", counting)
    model, pre = _frozen_model()
    train, val = _datasets(tiny_data, pre)
    mask = os.umask(0o022)
    try:
        Trainer(model, _cfg(epochs=1, cache_features="disk"), cache_dir=tmp_path).fit(train, val)
    finally:
        os.umask(mask)
    assert len(calls) == 1  # train and val share the phase's fingerprint
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 4 and all(f.stat().st_mode & 0o777 == 0o644 for f in files)


def test_history_names_the_metric_actually_monitored(tmp_path):
    """Without a validation set the trainer monitors train loss: history.json must say so."""
    data = _tensor_data()
    for val, expected in ((None, "train_loss"), (data, "val_accuracy")):
        cfg = TrainConfig(epochs=1, batch_size=16, monitor="val_accuracy", device="cpu")
        trainer = Trainer(nn.Linear(8, 2), cfg, callbacks=[HistoryWriter(tmp_path, plot=False)])
        assert trainer.fit(data, val).monitor == expected
        assert json.loads((tmp_path / "history.json").read_text())["monitor"] == expected


class _Recording(TensorDataset):
    """Remembers the label of every item the loader fetches (main process only)."""

    def __init__(self, *tensors):
        super().__init__(*tensors)
        self.drawn: list[int] = []

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        self.drawn.append(int(y))
        return x, y


@pytest.mark.slow
def test_balanced_sampler_draws_classes_equally_often():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 8, generator=g), torch.tensor([1] * 10 + [0] * 90)
    drawn = {}
    for sampler in ("shuffle", "balanced"):
        data = _Recording(x, y)
        cfg = TrainConfig(epochs=10, batch_size=25, sampler=sampler, device="cpu", seed=1)
        Trainer(nn.Linear(8, 2), cfg).fit(data)
        assert len(data.drawn) == 10 * 100  # an epoch is still one pass's worth of draws
        drawn[sampler] = sum(data.drawn) / len(data.drawn)
    assert drawn["shuffle"] == 0.1  # every image once per epoch: the data's own 10%
    assert 0.45 <= drawn["balanced"] <= 0.55  # ~ 500 ± 16 of 1000 draws


def test_label_smoothing_loss_matches_a_hand_computation():
    data = _tensor_data()
    eps = 0.2
    losses = {}
    for smoothing in (0.0, eps):
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=1, batch_size=16, label_smoothing=smoothing, device="cpu")
        losses[smoothing] = Trainer(nn.Linear(8, 2), cfg).fit(data).epochs[0].train_loss
    torch.manual_seed(0)
    logp = torch.log_softmax(nn.Linear(8, 2)(data.tensors[0]), 1).detach()
    nll = -logp.gather(1, data.tensors[1][:, None]).squeeze(1)
    # Smoothed target: 1 - eps on the true class plus eps spread evenly over both classes.
    expected = ((1 - eps) * nll + eps * -logp.mean(1)).mean().item()
    assert losses[eps] == pytest.approx(expected, rel=1e-5)
    assert losses[0.0] == pytest.approx(nll.mean().item(), rel=1e-5)


class _Groups(Callback):
    """Records each phase's optimizer groups as (name, lr, parameter names); stops at `last`."""

    def __init__(self, last: str):
        self.phases, self.last = {}, last

    def on_phase_start(self, trainer, phase, first, last):
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        self.phases[phase] = [
            (g["name"], g["lr"], {names[id(p)] for p in g["params"]})
            for g in trainer.optimizer.param_groups
        ]
        if phase == self.last:
            raise _Seen


class _Seen(Exception):
    pass


def test_backbone_lr_multiplier_sets_the_parameter_groups(tiny_data):
    model, pre = _frozen_model()
    train, _ = _datasets(tiny_data, pre)
    seen = _Groups(last="finetune")  # no need to train the finetune epoch itself
    cfg = _cfg(epochs=1, finetune_epochs=1, unfreeze=2, lr=1e-3, backbone_lr_mult=0.25)
    with pytest.raises(_Seen):
        Trainer(model, cfg, callbacks=[seen]).fit(train)
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    last_two = {f"backbone.{n}" for stage in _stage_params(model)[-2:] for n in stage}
    assert seen.phases["head"] == [("head", 1e-3, head)]  # backbone frozen: no group for it
    assert seen.phases["finetune"] == [("head", 1e-3, head), ("backbone", 2.5e-4, last_two)]


def _in_a_worker(dataset):
    """The dataset, refusing to load items in the main process: only DataLoader workers may."""

    class InWorker(type(dataset)):
        def __getitem__(self, i):
            assert torch.utils.data.get_worker_info() is not None, "loaded in the main process"
            return super().__getitem__(i)

    twin = copy.copy(dataset)
    twin.__class__ = InWorker
    return twin


@pytest.mark.slow
def test_worker_processes_give_the_same_result(tiny_data):
    model, pre = _frozen_model()
    twin = copy.deepcopy(model)
    train, val = _datasets(tiny_data, pre)
    cfg = _cfg(epochs=1, cache_features="off")
    alone = Trainer(model, cfg).fit(train, val)
    workers = Trainer(twin, cfg, num_workers=1).fit(_in_a_worker(train), _in_a_worker(val))
    for a, b in zip(_metrics(alone), _metrics(workers), strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    for (name, p), q in zip(model.head.state_dict().items(), twin.head.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("background", [False, True])
def test_checkpoint_interval_defers_both_files_and_keeps_them_in_step(tmp_path, background):
    """With an interval, best.pt and last.pt are written together once it has passed, and at the
    end; a better epoch in between reaches best.pt with its own weights and number."""
    model, _ = _frozen_model()
    now = [0.0]
    writes = []

    def save(path, snap, extra, state):
        writes.append((path.name, extra["epoch"]))
        skincls.save_checkpoint(
            path, snap, classes=["benign", "malignant"], training_state=state, **extra
        )

    history = History()
    trainer = SimpleNamespace(
        history=history, model=model, state_dict=lambda: {"epoch": history.epochs[-1].epoch}
    )
    writer = ModelCheckpoint(
        tmp_path, save, background=background, interval=10.0, clock=lambda: now[0]
    )
    writer.on_fit_start(trainer)
    weights = {}
    for epoch, t, improved in [(1, 1.0, True), (2, 5.0, False), (3, 12.0, False), (4, 13.0, True)]:
        with torch.no_grad():  # each epoch changes the weights
            for p in model.parameters():
                p.add_(1.0)
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        now[0] = t
        record = History.from_dict({"epochs": [_record(epoch)]}).epochs[0]
        history.epochs.append(record)
        writer.on_epoch_end(trainer, record, improved)
        if epoch == 2:
            writer._wait()
            assert writes == [] and not (tmp_path / "best.pt").exists()  # not due yet
    writer._wait()
    assert writes == [("best.pt", 1), ("last.pt", 3)]  # the interval passed at epoch 3
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(best["state_dict"][k], v) for k, v in weights[1].items())
    writer.on_fit_end(trainer, history)
    assert writes[2:] == [("best.pt", 4), ("last.pt", 4)]
    for name in ("best.pt", "last.pt"):
        raw = torch.load(tmp_path / name, weights_only=True)
        assert raw["epoch"] == 4
        assert all(torch.equal(raw["state_dict"][k], v) for k, v in weights[4].items())
