"""The model contract: the trainer trains any `nn.Module`, asking it (through optional methods) for its
parameter groups, what each phase freezes, a frozen part to cache and how a batch maps to its inputs."""

from __future__ import annotations

import ast
import copy
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from skincls import TrainConfig, Trainer
from skincls.errors import ConfigError
from skincls.training.callbacks import Callback

N = 40


class TwoInputs(nn.Module):
    """An image and a metadata vector: a small conv body's pooled features next to the metadata."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(4 + 3, 2)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([torch.flatten(self.body(image), 1), meta], 1))


class _Extractor(nn.Module):
    """The frozen part of `CachedTwoInputs`: (image, meta) → (N, 7) features."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.flatten(self.body(image), 1), meta], 1)


class CachedTwoInputs(TwoInputs):
    """`TwoInputs` with a frozen conv body that offers itself to the feature cache."""

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.body.requires_grad_(False)

    def split_for_cache(self):
        return _Extractor(self.body), self.classifier


def _two_input_data(seed: int = 0) -> TensorDataset:
    """(image, meta, target): the target is learnable from both inputs."""
    g = torch.Generator().manual_seed(seed)
    image, meta = torch.randn(N, 3, 8, 8, generator=g), torch.randn(N, 3, generator=g)
    target = ((meta[:, 0] + image.mean((1, 2, 3)) * 4) > 0).long()
    return TensorDataset(image, meta, target)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(
        **{"epochs": 6, "batch_size": 8, "lr": 3e-2, "device": "cpu", "precision": "fp32",
           "seed": 3, **kw}
    )  # fmt: skip


def _metrics(history):
    return [(e.epoch, e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy, e.lr)
            for e in history.epochs]  # fmt: skip


class _Snapshot(Callback):
    """Keeps the trainer's state and the model's weights at the end of epoch `at`, then stops the run."""

    def __init__(self, at: int):
        self.at, self.state, self.weights = at, None, None

    def on_epoch_end(self, trainer, record, improved):
        if record.epoch == self.at:
            self.state = copy.deepcopy(trainer.state_dict())
            self.weights = copy.deepcopy(trainer.model.state_dict())
            raise KeyboardInterrupt("stopped here")


def test_a_two_input_model_trains_and_resumes_through_the_trainer():
    train, val = _two_input_data(0), _two_input_data(1)
    model = TwoInputs()
    history = Trainer(model, _cfg()).fit(train, val)
    losses = [e.train_loss for e in history.epochs]
    assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < 0.7 * losses[0]
    assert history.cache == {"train": "off", "val": "off"}  # nothing to cache: no split offered
    assert any("no split_for_cache" in n for n in history.notes)

    snap = _Snapshot(at=3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(TwoInputs(), _cfg(), callbacks=[snap]).fit(train, val)
    resumed_model = TwoInputs(seed=99)  # other initial weights: the checkpoint's replace them
    resumed_model.load_state_dict(snap.weights)
    trainer = Trainer(resumed_model, _cfg())
    trainer.load_state_dict(snap.state)
    resumed = trainer.fit(train, val)
    assert [e.epoch for e in resumed.epochs] == [1, 2, 3, 4, 5, 6]
    assert _metrics(resumed) == _metrics(history)
    for (name, p), q in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(p, q), name


class _DictData(Dataset):
    """Items as dicts: {"image", "meta", "target"}."""

    def __init__(self, data: TensorDataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        image, meta, target = self.data[i]
        return {"meta": meta, "image": image, "target": target}


def test_dict_batches_reach_the_model_as_keyword_arguments():
    data = _two_input_data(0)
    as_tuples = Trainer(TwoInputs(), _cfg(epochs=2)).fit(data)
    as_dicts = Trainer(TwoInputs(), _cfg(epochs=2)).fit(_DictData(data))
    assert _metrics(as_dicts) == _metrics(as_tuples)


class _CountCalls:
    def __init__(self, module: nn.Module):
        self.items = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.items += len(inputs[0])


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_a_frozen_extractor_of_a_two_input_model_runs_once_per_item(mixup):
    train, val = _two_input_data(0), _two_input_data(1)
    cached_model, plain_model = CachedTwoInputs(), CachedTwoInputs()
    counter = _CountCalls(cached_model.body)
    cached = Trainer(cached_model, _cfg(epochs=3, cache_features="memory", mixup=mixup)).fit(
        train, val
    )
    assert cached.cache == {"train": "computed", "val": "computed"}
    assert counter.items == len(train) + len(val)  # once per item, not once per epoch
    plain_counter = _CountCalls(plain_model.body)
    plain = Trainer(plain_model, _cfg(epochs=3, cache_features="off", mixup=mixup)).fit(train, val)
    assert plain_counter.items == 3 * (len(train) + len(val))
    if not mixup:  # (mixup mixes features when cached, and images and metadata when not)
        for a, b in zip(_metrics(cached), _metrics(plain), strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert all(not p.requires_grad for p in cached_model.body.parameters())


class _Phased(TwoInputs):
    """Trains its classifier first, then its body too at a tenth of the rate: through the hooks."""

    def __init__(self):
        super().__init__()
        self.asked: list[tuple[str, object]] = []

    def freeze(self, phase):
        self.asked.append((phase.name, phase.freeze))
        self.body.requires_grad_(phase.name == "finetune")

    def param_groups(self, phase):
        return [
            {"params": self.classifier.parameters(), "lr": phase.lr, "name": "classifier"},
            {"params": self.body.parameters(), "lr": phase.lr / 10, "name": "body"},
        ]


class _Groups(Callback):
    def __init__(self):
        self.phases = {}

    def on_phase_start(self, trainer, phase, first, last):
        self.phases[phase] = [(g["name"], g["lr"]) for g in trainer.optimizer.param_groups]


def test_the_model_says_what_each_phase_freezes_and_its_parameter_groups():
    model, seen = _Phased(), _Groups()
    body_before = copy.deepcopy(model.body.state_dict())
    cfg = _cfg(epochs=1, finetune_epochs=1, unfreeze=1)
    Trainer(model, cfg, callbacks=[seen]).fit(_two_input_data())
    assert model.asked == [("head", None), ("finetune", 1)]
    assert seen.phases == {
        "head": [("classifier", 3e-2)],  # the frozen body's group is left out
        "finetune": [("classifier", 3e-2), ("body", 3e-3)],
    }
    assert any(not torch.equal(body_before[k], v) for k, v in model.body.state_dict().items())


def test_a_plain_model_cannot_fine_tune_and_is_told_why():
    with pytest.raises(ConfigError, match=r"fine-tuning needs a model with a freeze\(phase\)"):
        Trainer(TwoInputs(), _cfg(epochs=1, finetune_epochs=1)).fit(_two_input_data())


def test_the_trainer_imports_no_model():
    import skincls.training.trainer as trainer_module

    tree = ast.parse(Path(trainer_module.__file__).read_text())
    imported = [
        ("." * n.level) + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    ]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if "models" in m.split(".")], imported
