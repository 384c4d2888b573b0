"""Callback state in checkpoints: saved under each callback's `state_key`, so a resumed run with a
changed callback list still gives every callback its own state."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from skincls import TrainConfig, Trainer
from skincls.errors import ConfigError
from skincls.training.callbacks import (
    Callback,
    EarlyStopping,
    callback_states,
    load_callback_states,
)


class _Epochs(Callback):
    """Counts the epochs it has seen (resumable)."""

    def __init__(self, name: str = "epochs"):
        self.name = name
        self.seen = 0

    @property
    def state_key(self) -> str:
        return self.name

    def on_epoch_end(self, trainer, record, improved):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def _data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(16, 8, generator=g), torch.tensor([0, 1] * 8))


def _cfg(epochs):
    # A vanishing learning rate: the validation loss never improves after epoch 1.
    return TrainConfig(epochs=epochs, batch_size=16, lr=1e-30, device="cpu")


def test_reordered_and_inserted_callbacks_get_their_own_state_on_resume():
    torch.manual_seed(0)
    model, data = nn.Linear(8, 2), _data()
    first = Trainer(model, _cfg(2), callbacks=[EarlyStopping(3), _Epochs()])
    first.fit(data, data)
    state = first.state_dict()  # early stopping has waited 1 epoch; 2 epochs seen

    # Resumed with a new callback in front and the two others swapped.
    counter, stopper, extra = _Epochs(), EarlyStopping(3), _Epochs("new")
    second = Trainer(model, _cfg(10), callbacks=[extra, counter, stopper])
    second.load_state_dict(state)
    history = second.fit(data, data)
    # wait 1 (restored) → 3 after epochs 3 and 4: stops after epoch 4 (from 0 it would run to 5).
    assert [e.epoch for e in history.epochs] == [1, 2, 3, 4]
    assert history.stopped_early == ["train"]
    assert (counter.seen, extra.seen) == (4, 2)
    assert state["callbacks"] == {"EarlyStopping": {"wait": 1}, "epochs": {"seen": 2}}


def test_two_resumable_callbacks_with_one_key_are_refused():
    with pytest.raises(ConfigError, match="two callbacks save their state under the key 'epochs'"):
        Trainer(nn.Linear(8, 2), _cfg(1), callbacks=[_Epochs(), _Epochs()])
    trainer = Trainer(nn.Linear(8, 2), _cfg(1), callbacks=[])
    with pytest.raises(ConfigError, match="another state_key"):  # run.py assigns the list later
        trainer.callbacks = [EarlyStopping(2), EarlyStopping(3)]
    Trainer(
        nn.Linear(8, 2), _cfg(1), callbacks=[_Epochs("a"), _Epochs("b"), Callback(), Callback()]
    )


def test_positional_keys_of_old_checkpoints_still_load():
    stopper, counter = EarlyStopping(5), _Epochs()
    old = {"0:EarlyStopping": {"wait": 2}, "1:_Epochs": {"seen": 7}}
    load_callback_states([counter, stopper], old)  # moved: found by class name
    assert (stopper.wait, counter.seen) == (2, 7)

    # Two of one class: ambiguous by class, so matched by position and class.
    a, b = EarlyStopping(5), EarlyStopping(5)
    load_callback_states([a, b], {"0:EarlyStopping": {"wait": 1}, "1:EarlyStopping": {"wait": 3}})
    assert (a.wait, b.wait) == (1, 3)


def test_a_saved_state_no_callback_takes_is_reported(caplog):
    counter = _Epochs()
    with caplog.at_level(logging.WARNING, logger="skincls"):
        load_callback_states([counter], {"epochs": {"seen": 3}, "EarlyStopping": {"wait": 1}})
    assert counter.seen == 3
    [message] = [r.getMessage() for r in caplog.records]
    assert "'EarlyStopping' matches no callback of this run" in message
    assert callback_states([counter]) == {"epochs": {"seen": 3}}
