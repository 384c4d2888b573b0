"""Mixup (`--mixup ALPHA`): the training loss is λ·L(y) + (1 − λ)·L(y[π]) on the mixed batch, off means
untouched, validation never mixes, cached features are mixed in feature space, a distributed share
mixes the same pairs as one process, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import skincls
from skincls import RunConfig, TrainConfig, Trainer
from skincls.errors import ConfigError
from skincls.models.checkpoint import load_checkpoint
from skincls.runtime import seed_everything
from skincls.training import mixup as mixup_module
from skincls.training import steps
from skincls.training.callbacks import Callback
from skincls.training.mixup import Mix, draw_mixup, rank_rows
from skincls.training.optim import build_optimizer

N = 16


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(N, 8, generator=g), torch.tensor([1] * 5 + [0] * 11))


def _fixed(lam: float, perm: torch.Tensor):
    """A `draw_mixup` that always gives `lam` and `perm` (one global batch per epoch)."""

    def draw(alpha, sizes, generator):
        assert list(sizes) == [len(perm)]
        return [Mix(lam, perm)]

    return draw


def _order(seed: int, n: int = N) -> torch.Tensor:
    """The trainer's batch order of the first epoch: a permutation from a generator seeded `seed`."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def test_training_loss_is_the_mixed_loss_of_the_mixed_batch(monkeypatch):
    lam, perm = 0.3, torch.tensor([5, 3, 0, 9, 12, 1, 15, 2, 7, 4, 14, 6, 11, 13, 10, 8])
    monkeypatch.setattr(mixup_module, "draw_mixup", _fixed(lam, perm))
    data = _data()
    cfg = TrainConfig(
        epochs=1, batch_size=N, mixup=0.2, label_smoothing=0.1, class_weights="balanced",
        device="cpu", seed=4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    before = copy.deepcopy(model)
    record = Trainer(model, cfg).fit(data).epochs[0]

    x, y = (t[_order(4)] for t in data.tensors)  # the one batch, in the trainer's order
    mixed = lam * x + (1 - lam) * x[perm]
    logits = before(mixed).detach()
    w = torch.tensor([16 / 22, 16 / 10])  # balanced: n / (classes × count)
    ce = nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)
    expected = lam * ce(logits, y) + (1 - lam) * ce(logits, y[perm])
    assert record.train_loss == pytest.approx(expected.item(), rel=1e-6)
    # λ < 0.5: the partner's label dominates the mixed image, and is what the accuracy counts.
    hits = (logits.argmax(1) == y[perm]).float().mean().item()
    assert record.train_accuracy == pytest.approx(hits)


def test_lambda_one_is_plain_training_bit_for_bit(monkeypatch):
    """λ = 1 mixes nothing in: same batches, loss, steps and accuracy as a run without mixup."""
    data = _data()
    runs = {}
    for mixup in (0.0, 0.5):
        torch.manual_seed(0)
        model = nn.Linear(8, 2)
        cfg = TrainConfig(epochs=2, batch_size=8, mixup=mixup, device="cpu", seed=1)
        monkeypatch.setattr(
            mixup_module,
            "draw_mixup",
            lambda alpha, sizes, g: [Mix(1.0, torch.randperm(n)) for n in sizes],
        )
        history = Trainer(model, cfg).fit(data, data)
        runs[mixup] = ([vars(e) | {"seconds": 0} for e in history.epochs], model.state_dict())
    assert runs[0.5][0] == runs[0.0][0]
    assert all(torch.equal(runs[0.5][1][k], v) for k, v in runs[0.0][1].items())


def _dropout_net():
    torch.manual_seed(0)  # dropout: a stray draw from the global RNG would change the run
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.Linear(16, 2))


def _plain_loop(model, data, cfg):
    """What the trainer does without mixup, written out: shuffle, Adam steps on the mean loss."""
    seed_everything(cfg.seed)
    order_rng = torch.Generator().manual_seed(cfg.seed)
    opt = build_optimizer([{"params": list(model.parameters()), "lr": cfg.lr}], cfg)
    losses = []
    for _ in range(cfg.epochs):
        model.train()
        total = 0.0
        for b in torch.randperm(len(data), generator=order_rng).split(cfg.batch_size):
            x, y = data[b]
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        losses.append(total / len(data))
    return losses


def test_mixup_off_never_mixes_and_trains_as_before(monkeypatch):
    data = _data()
    cfg = TrainConfig(epochs=3, batch_size=5, mixup=0.0, device="cpu", seed=7)
    reference = _dropout_net()
    losses = _plain_loop(reference, data, cfg)

    def refuse(*args, **kwargs):
        raise AssertionError("mixup is off: nothing may be mixed")

    monkeypatch.setattr(mixup_module, "draw_mixup", refuse)
    monkeypatch.setattr(steps, "mix_batch", refuse)
    model = _dropout_net()
    history = Trainer(model, cfg).fit(data)
    assert [e.train_loss for e in history.epochs] == pytest.approx(losses, rel=1e-12)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_validation_never_mixes(monkeypatch):
    mixed_batches = []
    real = steps.mix_batch
    monkeypatch.setattr(
        steps, "mix_batch", lambda *a: (mixed_batches.append(len(a[0])), real(*a))[1]
    )
    train, val = _data(0), _data(1)
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    cfg = TrainConfig(epochs=2, batch_size=5, mixup=1.0, device="cpu")
    history = Trainer(model, cfg).fit(train, val)
    assert mixed_batches == [5, 5, 5, 1] * 2  # the training batches of two epochs, nothing else
    with torch.no_grad():  # the final weights on the unmixed validation set
        plain = nn.functional.cross_entropy(model(val.tensors[0]), val.tensors[1]).item()
    assert history.epochs[-1].val_loss == pytest.approx(plain, rel=1e-6)


def test_cached_features_are_mixed_in_feature_space(tiny_data, monkeypatch):
    seed_everything(0)
    model = skincls.create_model(
        "smallcnn", weights="none", head=(16,), dropout=0.0, freeze="backbone"
    )
    manifest = skincls.load_manifest(tiny_data)
    pre = model.preprocessing.with_size(32)
    train = skincls.data.dataset.ManifestDataset(
        manifest, "train", skincls.data.dataset.build_transform(pre)
    )
    n = len(train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(mixup_module, "draw_mixup", _fixed(0.25, perm))
    seen = []
    model.head.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    cfg = TrainConfig(
        epochs=1,
        batch_size=n,
        mixup=0.2,
        cache_features="memory",
        precision="fp32",
        device="cpu",
        seed=6,
    )
    history = Trainer(model, cfg).fit(train)
    assert history.cache["train"] == "computed"
    with torch.no_grad():
        images = torch.stack([train[i][0] for i in _order(6, n).tolist()])
        f = model.features(images)
    assert torch.allclose(seen[0], 0.25 * f + 0.75 * f[perm], atol=1e-5)


def test_a_distributed_share_mixes_the_same_pairs_as_one_process():
    batch = [40 + i for i in range(7)]
    (mix,) = draw_mixup(0.4, [7], torch.Generator().manual_seed(0))
    one_rows, one_partner = rank_rows(batch, mix, 0, 7)
    pairs = {(one_rows[j], one_rows[p]) for j, p in enumerate(one_partner.tolist())}
    assert pairs == {(batch[j], batch[p]) for j, p in enumerate(mix.perm.tolist())}
    for world in (2, 3):
        shared = set()
        for rank in range(world):
            start, stop = skincls.training.distributed.shard_bounds(7, rank, world)
            rows, partner = rank_rows(batch, mix, start, stop)
            own = rows[: len(partner)]
            assert own == batch[start:stop]
            shared |= {(own[j], rows[p]) for j, p in enumerate(partner.tolist())}
        assert shared == pairs


def test_draws_are_seeded_and_alpha_is_bounded():
    a = draw_mixup(0.2, [4, 4, 3], torch.Generator().manual_seed(1))
    b = draw_mixup(0.2, [4, 4, 3], torch.Generator().manual_seed(1))
    assert [(m.lam, m.perm.tolist()) for m in a] == [(m.lam, m.perm.tolist()) for m in b]
    assert all(0 <= m.lam <= 1 for m in a) and len({m.lam for m in a}) == 3
    assert sorted(a[2].perm.tolist()) == [0, 1, 2]
    with pytest.raises(ConfigError, match="mixup"):
        skincls.load_config(None, {"train.mixup": 11.0})
    with pytest.raises(ConfigError, match="mixup"):
        skincls.load_config(None, {"train.mixup": -0.1})


class _Crash(Callback):
    def on_epoch_end(self, trainer, record, improved):
        if record.epoch == 2:
            raise KeyboardInterrupt("simulated kill")


def _run_config(data_dir, out, mixup):
    return RunConfig.model_validate(
        {
            "data": {"data_dir": data_dir, "image_size": 32},
            "model": {"arch": "smallcnn", "weights": "none", "freeze": "none", "head": [16]},
            "train": {"epochs": 3, "batch_size": 8, "device": "cpu", "seed": 3, "mixup": mixup},
            "out": out,
        }
    )


@pytest.mark.slow
def test_resumed_mixup_run_equals_the_uninterrupted_one(tiny_data, tmp_path):
    strip = lambda h: [{k: v for k, v in vars(e).items() if k != "seconds"} for e in h.epochs]  # noqa: E731
    plain = skincls.train_from_config(
        _run_config(tiny_data, tmp_path / "plain", 0.0), progress=False
    )
    full = skincls.train_from_config(_run_config(tiny_data, tmp_path / "full", 0.4), progress=False)
    assert strip(full.history) != strip(plain.history)  # mixup did change the run
    run = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        skincls.train_from_config(
            _run_config(tiny_data, run, 0.4), progress=False, callbacks=[_Crash()]
        )
    resumed = skincls.train_from_config(
        _run_config(tiny_data, run, 0.4), progress=False, resume=True
    )
    assert strip(resumed.history) == strip(full.history)
    a = load_checkpoint(run / "last.pt").data["state_dict"]
    b = load_checkpoint(tmp_path / "full" / "last.pt").data["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert load_checkpoint(run / "last.pt").data["train_config"]["train"]["mixup"] == 0.4


@pytest.mark.slow
def test_cli_option_is_recorded_in_config_json_and_bounded(tiny_data, tmp_path):
    from click.testing import CliRunner

    from skincls.cli import main
    from tests.conftest import TINY_TRAIN

    runner = CliRunner()
    for command in ("train", "cv"):
        assert "--mixup ALPHA" in runner.invoke(main, [command, "--help"]).output
    args = ["train", "--data-dir", str(tiny_data), *TINY_TRAIN, "--epochs", "1"]
    r = runner.invoke(main, [*args, "--out", str(tmp_path / "run"), "--mixup", "0.3"])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["mixup"] == 0.3
    r = runner.invoke(main, [*args, "--out", str(tmp_path / "bad"), "--mixup", "11"])
    assert r.exit_code != 0 and "--mixup" in r.output and "0<=x<=10" in r.output
