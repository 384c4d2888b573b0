"""Shared fixtures: no network, user dirs redirected, tiny datasets made on the fly."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest
import torch

from skincls.data.fetch import fetch
from skincls.models.checkpoint import save_checkpoint
from skincls.models.classifier import create_model


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a network connection fails the test.

    Unix-domain sockets stay open: they are local IPC (DataLoader workers pass tensors through
    them), not network.
    """

    def guard(*args, **kwargs):
        raise NetworkBlocked(f"test tried to reach the network: {args!r}")

    def local_only(real):
        # Unix-domain sockets stay on this machine (multiprocessing's forkserver uses one).
        def connect(sock, *args, **kwargs):
            if getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX:
                return real(sock, *args, **kwargs)
            return guard(sock, *args, **kwargs)

        return connect

    monkeypatch.setattr(socket.socket, "connect", local_only(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", local_only(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "create_connection", guard)
    monkeypatch.setattr(socket, "getaddrinfo", guard)


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Torch hub cache and Kaggle config point into a temp dir, never at the user's own."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "kaggle"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared data dir with 48 synthetic images (shared, read-only by convention)."""
    data_dir = tmp_path_factory.mktemp("tiny") / "data"
    fetch(data_dir, synthetic=48, seed=3, val_fraction=0.2)
    return data_dir


TINY_TRAIN = [
    "--arch",
    "smallcnn",
    "--weights",
    "none",
    "--freeze",
    "none",
    "--image-size",
    "32",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--seed",
    "1",
    "--quiet",
]


@pytest.fixture(scope="session")
def untrained_ckpt_file(tmp_path_factory) -> Path:
    """An untrained (seeded) smallcnn checkpoint at 32 px: its outputs are arbitrary but fixed."""
    torch.manual_seed(0)
    model = create_model("smallcnn", weights="none", head=(16,), dropout=0.0, freeze="none")
    pre = model.preprocessing
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(
        path,
        model,
        model_config={"arch": "smallcnn", "head": [16], "dropout": 0.0, "freeze": "none"},
        classes=["benign", "malignant"],
        preprocessing=pre.with_size(32),
    )
    return path


@pytest.fixture()
def ckpt(untrained_ckpt_file, tmp_path) -> Path:
    """A private copy of `untrained_ckpt_file`: evaluate and predict tests may write into it."""
    return Path(shutil.copy(untrained_ckpt_file, tmp_path / "model.pt"))


def _hold_lock(folder: str, command: str, ready, release, die: bool) -> None:
    from skincls.locks import DirLock

    lock = DirLock(folder, command).acquire()  # kept referenced: a collected lock is released
    if die:  # killed while holding it: the lock record stays behind, the OS lock goes
        os.kill(os.getpid(), signal.SIGKILL)
    ready.set()
    release.wait(120)
    lock.release()


@contextlib.contextmanager
def lock_held_elsewhere(folder: Path, command: str = "skincls train"):
    """Another process holds `folder`'s skincls lock while the block runs; yields that pid.

    Forked, so it starts in milliseconds; the child only takes the lock and waits.
    """
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(folder), command, ready, release, False))
    proc.start()
    try:
        assert ready.wait(60), "the lock holder did not start"
        yield proc.pid
    finally:
        release.set()
        proc.join(60)


def lock_left_by_killed_process(folder: Path, command: str = "skincls train") -> int:
    """A process takes `folder`'s lock and is SIGKILLed holding it; returns its (now dead) pid."""
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(folder), command, ready, release, True))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    return proc.pid
