"""The kill test: `skincls train` SIGKILLed at random moments and resumed each time ends exactly where an
uninterrupted run ends, leaves no stale temp file, and every checkpoint on disk loads at every moment.

Each run is a separate process running the CLI (`skincls train ...`, as `python -m skincls` does),
forked from a server that imported skincls once: a fresh interpreter per run would spend seconds on
imports, so few kills would land inside training. The server and its children use one thread each,
which also makes their float arithmetic identical run to run.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections import Counter

import pytest
import torch

from skincls.atomic import is_temp_name
from skincls.models.checkpoint import load_checkpoint

KILLS = 20
EPOCHS = 8
SEED = 20261126  # the kill moments are drawn from it


def _cli(argv: list[str], log: str) -> None:
    """Child process: run `skincls ARGV`, its output appended to `log`; exits with its status."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    from skincls.cli import main

    main(argv, prog_name="skincls")


@pytest.fixture(scope="module")
def forkserver():
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch when the server imports it
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["skincls.cli", "skincls.training.run", "skincls.training.plots", __name__]
    )
    yield ctx
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old


def _final(run) -> tuple[dict, dict, list]:
    best = load_checkpoint(run / "best.pt").data
    last = load_checkpoint(run / "last.pt").data
    epochs = last["training_state"]["history"]["epochs"]
    history = [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]
    return best["state_dict"], last["state_dict"], history


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_training_killed_at_random_moments_resumes_to_the_same_weights(
    tiny_data, tmp_path, forkserver
):
    log = tmp_path / "log.txt"
    argv = ["train", "--data-dir", str(tiny_data), "--arch", "smallcnn", "--weights", "none",
            "--freeze", "none", "--head", "8", "--image-size", "16", "--epochs", str(EPOCHS),
            "--batch-size", "8", "--device", "cpu", "--seed", "3", "--quiet",
            # Files every ~0.1 s of training, not every epoch: kills land between writes, with a
            # better epoch held back in memory, as with the default interval on real runs.
            "--checkpoint-interval", "0.1"]  # fmt: skip

    def launch(out, extra, kill_after=None) -> tuple[bool, int | None, float]:
        proc = forkserver.Process(target=_cli, args=([*argv, "--out", str(out), *extra], str(log)))
        start = time.monotonic()
        proc.start()
        proc.join(kill_after)
        killed = proc.is_alive()
        if killed:
            proc.kill()  # SIGKILL: no handler, no cleanup
            proc.join()
        return killed, proc.exitcode, time.monotonic() - start

    def tail() -> str:
        return log.read_text()[-3000:] if log.exists() else ""

    proc = forkserver.Process(target=_cli, args=(["--version"], str(log)))
    proc.start()  # starts the server (imports skincls once) before anything is timed
    proc.join()
    assert proc.exitcode == 0, tail()
    reference = tmp_path / "reference"
    killed, code, t_full = launch(reference, [])
    assert not killed and code == 0, tail()
    expected = _final(reference)

    rng = random.Random(SEED)
    run = tmp_path / "run"
    kills, finished, landed, temps_left = 0, 0, Counter(), 0
    restart = False  # after a finished run, start the next one with --overwrite
    started = time.monotonic()
    for _ in range(200):
        if kills >= KILLS:
            break
        if restart:
            extra = ["--overwrite"]
        elif (run / "config.json").exists() or (run / "last.pt").exists():
            extra = ["--resume"]
        else:
            extra = []
        restart = False
        killed, code, _ = launch(run, extra, kill_after=rng.uniform(0.0, t_full))
        if not killed:
            assert code == 0, tail()
            _check_finished(run, expected)
            finished += 1
            restart = True
            continue
        kills += 1
        # Whatever the moment, each checkpoint file present is whole and loads.
        epochs = {n: load_checkpoint(run / n).data["epoch"] for n in ("best.pt", "last.pt")
                  if (run / n).exists()}  # fmt: skip
        landed[f"after epoch {epochs['last.pt']}" if "last.pt" in epochs else "before epoch 1"] += 1
        temps_left += any(is_temp_name(p.name) for p in run.iterdir()) if run.exists() else 0
    assert kills >= KILLS, f"only {kills} kills landed"

    extra = ["--resume"] if (run / "config.json").exists() else []
    killed, code, _ = launch(run, extra)  # the last run is left to finish
    assert not killed and code == 0, tail()
    _check_finished(run, expected)
    print(
        f"\nkill test: {kills} kills (seed {SEED}, moments uniform in [0, {t_full:.2f}] s), "
        f"{finished + 1} runs finished, {temps_left} kills left a temp file, landed "
        f"{dict(sorted(landed.items()))}; {time.monotonic() - started:.1f} s"
    )


def _check_finished(run, expected) -> None:
    best, last, history = _final(run)
    assert _same(best, expected[0]) and _same(last, expected[1])
    assert history == expected[2]
    assert not [p.name for p in run.iterdir() if is_temp_name(p.name) or p.suffix == ".tmp"]
