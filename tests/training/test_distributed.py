"""Distributed training under torchrun (gloo, 2 CPU processes): same results as one process, one set of
files, resumable after a kill, and a crashed rank ends the job instead of hanging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.fetch import fetch
from skincls.training.distributed import Dist, shard_bounds

pytestmark = pytest.mark.timeout(600)

SKINCLS = [sys.executable, "-m", "skincls"]


def test_shards_cover_every_item_once():
    for n in range(0, 30):
        for world in (1, 2, 3, 5):
            spans = [shard_bounds(n, r, world) for r in range(world)]
            assert [i for a, b in spans for i in range(a, b)] == list(range(n))
            assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1
    assert Dist(rank=1, world_size=2).shard([10, 11, 12, 13, 14]) == [13, 14]


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    """Synthetic data and a ResNet-18 state-dict file (a frozen backbone needs real weights)."""
    root = tmp_path_factory.mktemp("ddp")
    fetch(root / "data", synthetic=40, seed=2, val_fraction=0.2)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), root / "r18.pth")
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data-dir", str(root / "data"), "--out", str(out), "--arch", "resnet18",
        "--weights", str(root / "r18.pth"), "--freeze", "backbone", "--dropout", "0",
        "--head", "16", "--image-size", "32", "--batch-size", "7", "--device", "cpu",
        "--seed", "1", "--quiet", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, SKINCLS_DIST_TIMEOUT="60", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path])
    return env


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SKINCLS, *args], env=_env(), capture_output=True, text=True, timeout=300, **kw
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _losses(run: Path) -> list[tuple[float, float]]:
    epochs = json.loads((run / "history.json").read_text())["epochs"]
    return [(e["train_loss"], e["val_loss"]) for e in epochs]


def _assert_same_run(a: Path, b: Path) -> None:
    for (ta, va), (tb, vb) in zip(_losses(a), _losses(b), strict=True):
        assert ta == pytest.approx(tb, rel=1e-5) and va == pytest.approx(vb, rel=1e-5)
    wa, wb = _weights(a / "best.pt"), _weights(b / "best.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["memory", "off"])
def test_two_processes_match_one_with_the_same_global_batch(ddp_data, runner, cache):
    # 25 training images in batches of 7: the last global batch (4) splits 2 + 2 and the others 4 + 3;
    # balanced class weights make the per-rank denominators differ: all must still add up exactly.
    extra = ("--epochs", "2", "--cache-features", cache, "--class-weights", "balanced")
    one, two = ddp_data / f"one-{cache}", ddp_data / f"two-{cache}"
    r = runner.invoke(main, _args(ddp_data, one, *extra))
    assert r.exit_code == 0, r.output
    r = _run([*_args(ddp_data, two, *extra), "--nproc", "2"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("best checkpoint:") == 1  # rank 0 reports; rank 1 stays quiet
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    notes = json.loads((two / "history.json").read_text())["notes"]
    assert any("distributed: 2 processes, global batch 7" in n for n in notes)
    _assert_same_run(one, two)


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["memory", "off"])
def test_two_processes_mix_the_same_pairs_as_one(ddp_data, runner, cache):
    # Mixup pairs span the ranks' shares: each rank loads its partners too (features or images).
    extra = ("--epochs", "2", "--cache-features", cache, "--class-weights", "balanced")
    extra += ("--mixup", "0.4")
    one, two = ddp_data / f"mix-one-{cache}", ddp_data / f"mix-two-{cache}"
    r = runner.invoke(main, _args(ddp_data, one, *extra))
    assert r.exit_code == 0, r.output
    r = _run([*_args(ddp_data, two, *extra), "--nproc", "2"])
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_same_run(one, two)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the test could interrupt it"
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


def _epoch_of(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # not there yet, or being replaced
        return 0


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_uninterrupted_result(ddp_data, runner):
    extra = ("--epochs", "4", "--cache-features", "off", "--image-size", "64")
    extra += ("--checkpoint-interval", "0")  # last.pt at each epoch's end, to kill after one
    ref, run = ddp_data / "ref", ddp_data / "killed"
    r = runner.invoke(main, _args(ddp_data, ref, *extra))
    assert r.exit_code == 0, r.output
    proc = subprocess.Popen(
        [*SKINCLS, *_args(ddp_data, run, *extra), "--nproc", "2"],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: _epoch_of(run / "last.pt") >= 1, 240, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    finally:
        proc.wait(timeout=60)
    assert _epoch_of(run / "last.pt") < 4
    r = _run([*_args(ddp_data, run, *extra), "--resume", "--nproc", "2"])
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_same_run(ref, run)


@pytest.mark.slow
def test_a_crashed_rank_ends_the_job_with_one_clear_line(ddp_data):
    extra = ("--epochs", "200", "--cache-features", "off", "--image-size", "64")
    extra += ("--checkpoint-interval", "0")
    out = ddp_data / "crash"
    proc = subprocess.Popen(
        [*SKINCLS, *_args(ddp_data, out, *extra), "--nproc", "2"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: _epoch_of(out / "last.pt") >= 1, 240, proc)
        launcher = _children(proc.pid)
        ranks = [c for p in launcher for c in _children(p)]
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)  # one rank dies; the other waits in a collective
        start = time.monotonic()
        _, err = proc.communicate(timeout=120)
        ended = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert ended < 120
    assert "training failed in one of its 2 processes" in err.strip().splitlines()[-1]
