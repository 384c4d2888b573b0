"""What commands print: help in option names, the device line, and output that survives a pipe."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from skincls.cli import main
from skincls.runtime import plan_precision
from tests.conftest import TINY_TRAIN

CPU = torch.device("cpu")
COMMANDS = ["fetch", "train", "evaluate", "predict", "export", "models", "demo", "runs"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_no_none_and_no_config_keys(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "None" not in text  # nobody can type None on a command line
    flat = " ".join(text.split())
    keys = ("backbone_lr_mult", "weight_decay", "finetune_epochs", "num_workers", "batch_size")
    for key in (*keys, "model.freeze"):
        assert key not in flat, key


def test_train_help_shows_the_config_bounds():
    flat = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    assert "--epochs INTEGER RANGE" in flat and "1<=x<=10000" in flat
    assert "--lr FLOAT RANGE" in flat and "0<x<=10" in flat


@pytest.mark.slow
def test_train_stages_is_what_freeze_n_used_to_be(tiny_data, tmp_path):
    out = tmp_path / "r"
    args = ["train", "--data-dir", str(tiny_data), "--out", str(out), *TINY_TRAIN]
    args[args.index("--freeze") : args.index("--freeze") + 2] = ["--train-stages", "1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["model"]["freeze"] == 1
    r = CliRunner().invoke(main, ["train", "--data-dir", str(tiny_data), "--freeze", "1"])
    assert r.exit_code == 2 and "use --train-stages 1" in r.output


@pytest.mark.slow
def test_train_says_which_device_and_threads(tiny_data, tmp_path):
    r = CliRunner().invoke(
        main, ["train", "--data-dir", str(tiny_data), "--out", str(tmp_path / "r"), *TINY_TRAIN]
    )
    assert r.exit_code == 0, r.output
    precision = plan_precision("auto", CPU).describe()  # e.g. "precision auto: fp32"
    line = f"device: cpu ({torch.get_num_threads()} threads), {precision}"
    assert r.stderr.splitlines().count(line) == 1, r.stderr  # said once, off a terminal too
    assert not any("threads" in other for other in r.stderr.splitlines() if other != line)


def test_predict_and_evaluate_say_which_device(ckpt, tiny_data):
    image = next((tiny_data / "images" / "test").rglob("*.jpg"))
    line = (
        f"device: cpu ({torch.get_num_threads()} threads), "
        f"precision {plan_precision('auto', CPU).inference}"
    )
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(image), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert line in r.stderr.splitlines(), r.stderr
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(image), "--json"])
    json.loads(r.output)  # --json prints the JSON alone
    r = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(ckpt),
            "--data-dir",
            str(tiny_data),
            "--bootstrap",
            "0",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert line in r.stderr.splitlines(), r.stderr


def test_piped_output_is_not_wrapped_or_truncated(ckpt, tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    deep = tmp_path / "a_folder_with_a_rather_long_name" / "and_another_one_below_it"
    deep.mkdir(parents=True)
    src = next((tiny_data / "images" / "test").rglob("*.jpg"))
    image = deep / "lesion_photographed_on_the_left_forearm.jpg"
    image.write_bytes(src.read_bytes())
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(image)])  # CliRunner: not a terminal
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    # The whole path on one row of the table, the title on one line, no header cut short.
    assert any(str(image) in ln and "malignant" not in ln.split(str(image))[0] for ln in lines)
    assert any(f"predictions ({ckpt}; threshold argmax" in ln for ln in lines), r.stdout
    assert "…" not in r.stdout

    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0
    # A caption sentence stays on one line.
    assert any(
        "stages: what --train-stages N counts; px: default input size" in ln
        for ln in r.stdout.splitlines()
    ), r.stdout


@pytest.mark.slow
def test_predict_draws_a_progress_bar_on_a_terminal_for_many_images(ckpt, tiny_data, tmp_path):
    import io

    from rich.console import Console

    import skincls.cli._common as common

    src = next((tiny_data / "images" / "test").rglob("*.jpg"))
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(70):
        (folder / f"{i}.jpg").write_bytes(src.read_bytes())
    terminal = io.StringIO()
    real = common.err_console
    common.err_console = Console(file=terminal, force_terminal=True, width=100)
    try:
        r = CliRunner().invoke(main, ["predict", str(ckpt), str(folder), "--device", "cpu"])
        assert r.exit_code == 0, r.output
        assert "predict" in terminal.getvalue() and "70/70" in terminal.getvalue()
        # --quiet: no bar; a few images: no bar either (no flicker).
        for args in (["--quiet", str(folder)], [str(folder / "1.jpg"), str(folder / "2.jpg")]):
            terminal.seek(0)
            terminal.truncate()
            r = CliRunner().invoke(main, ["predict", str(ckpt), *args, "--device", "cpu"])
            assert r.exit_code == 0, r.output
            assert "/70" not in terminal.getvalue() and "/2" not in terminal.getvalue()
    finally:
        common.err_console = real
    # Off a terminal (a log file) the callback is None: nothing but the results.
    with common.progress_bar() as progress:
        assert progress is None


def test_an_epoch_line_is_one_line_off_a_terminal():
    """Rich wraps at 80 columns off a terminal; the epoch line (about 90 characters) must not be."""
    import io

    from rich.console import Console

    from skincls.training.callbacks import RichProgress
    from skincls.training.history import EpochRecord

    out = io.StringIO()
    progress = RichProgress(Console(file=out, width=80))
    progress.bar = type("Bar", (), {"advance": lambda self, task: None})()
    progress.epochs = 0
    record = EpochRecord(12, "finetune", 0.74993, 0.448, 0.65821, 0.667, 1e-3, 3.04)
    progress.on_epoch_end(None, record, improved=True)
    assert out.getvalue() == (
        "epoch 12 (finetune): train_loss 0.7499 train_acc 0.448 val_loss 0.6582 val_acc 0.667 "
        "[3.0s] *\n"
    )


def test_train_with_progress_says_the_device_once_off_a_terminal(tiny_data, tmp_path):
    """Progress on (no --quiet) and stderr a pipe: the trainer's note and the CLI once said it twice."""
    import subprocess
    import sys

    args = [a for a in TINY_TRAIN if a != "--quiet"]
    args[args.index("--epochs") + 1] = "1"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "skincls",
            "train",
            "--data-dir",
            str(tiny_data),
            "--out",
            str(tmp_path / "r"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "threads" in line]
    assert said == [
        f"device: cpu ({torch.get_num_threads()} threads), {plan_precision('auto', CPU).describe()}"
    ], r.stderr
