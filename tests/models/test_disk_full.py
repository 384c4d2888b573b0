"""A disk that fills up while a checkpoint is written: one line naming the file, nothing half-written.

torch reports a failed write of its zip container as `RuntimeError: [enforce fail at
inline_container.cc:...] unexpected pos ...`; the OS error behind it is what the user must see.
"""

from __future__ import annotations

import errno
import io

import pytest
import torch
from click.testing import CliRunner

import skincls.atomic
from skincls.cli import main
from skincls.models.checkpoint import load_checkpoint, save_checkpoint
from skincls.models.classifier import create_model
from tests.conftest import TINY_TRAIN


class _FullDisk(io.FileIO):
    """A file whose disk fills up after `room` bytes (as a full tmpfs does)."""

    room = 0

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


@pytest.fixture()
def full_disk(monkeypatch):
    """Binary atomic writes (checkpoints) hit a full disk once `full_disk.room` bytes are written."""
    real_open = open
    monkeypatch.setattr(_FullDisk, "room", 10**12)

    def fake_open(file, mode="r", *args, **kwargs):
        if mode == "wb":
            return _FullDisk(file, "wb")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(skincls.atomic, "open", fake_open, raising=False)
    return _FullDisk


def _model():
    return create_model("smallcnn", weights="none", head=(8,), freeze="none")


def _one_line(result, *needles):
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert "Traceback" not in result.output and "inline_container" not in result.output
    for needle in needles:
        assert needle in line, line
    return line


def test_torch_turns_a_full_disk_into_a_runtime_error(tmp_path, full_disk):
    """What the mapping is for: torch itself does not raise the OSError."""
    full_disk.room = 2000
    with (
        _FullDisk(tmp_path / "x.pt", "wb") as fh,
        pytest.raises(RuntimeError, match="unexpected pos"),
    ):
        torch.save({"w": torch.zeros(10_000)}, fh)


def test_save_checkpoint_on_a_full_disk_raises_enospc_and_keeps_the_old_file(tmp_path, full_disk):
    path = tmp_path / "best.pt"
    save_checkpoint(path, _model(), classes=["benign", "malignant"], epoch=1)
    before = path.read_bytes()
    full_disk.room = 2000
    with pytest.raises(OSError) as info:
        save_checkpoint(path, _model(), classes=["benign", "malignant"], epoch=2)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    full_disk.room = 10**12
    assert path.read_bytes() == before and load_checkpoint(path).data["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no temp file left


def test_evaluate_save_on_a_full_disk_is_one_line(ckpt, tiny_data, full_disk):
    before = ckpt.read_bytes()
    full_disk.room = 2000
    r = CliRunner().invoke(
        main, ["evaluate", str(ckpt), "--data-dir", str(tiny_data), "--bootstrap", "0", "--save"]
    )
    _one_line(r, "No space left on device", str(ckpt), "free some disk space")
    assert ckpt.read_bytes() == before


def test_train_on_a_full_disk_is_one_line(tiny_data, tmp_path, full_disk):
    full_disk.room = 2000
    run = tmp_path / "run"
    r = CliRunner().invoke(
        main, ["train", "--data-dir", str(tiny_data), "--out", str(run), *TINY_TRAIN]
    )
    _one_line(r, "No space left on device", str(run / "best.pt"), "free some disk space")
    assert not list(run.glob("*.pt")) and not list(run.glob(".*.tmp"))
