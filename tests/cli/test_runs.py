"""`skincls runs`: one table row per run dir, read from its files without loading weights."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from skincls.cli import main
from skincls.training.runs import list_runs
from tests.conftest import TINY_TRAIN


@pytest.fixture(scope="module")
def two_runs(tiny_data, tmp_path_factory):
    """runs/a (2 epochs, evaluated with --save, so best.pt holds test metrics), runs/b (1 epoch)."""
    root = tmp_path_factory.mktemp("runs_root") / "runs"
    runner = CliRunner()
    for name, epochs in (("a", "2"), ("b", "1")):
        args = [a if a != "2" else epochs for a in TINY_TRAIN]  # --epochs 2 → --epochs N
        r = runner.invoke(
            main, ["train", "--data-dir", str(tiny_data), "--out", str(root / name), *args]
        )
        assert r.exit_code == 0, r.output
    evaluate = ["evaluate", str(root / "a" / "best.pt"), "--data-dir", str(tiny_data)]
    r = runner.invoke(
        main, [*evaluate, "--calibrate", "--keep-worse-calibration", "--save", "--bootstrap", "0"]
    )
    assert r.exit_code == 0, r.output
    return root


@pytest.mark.slow
def test_runs_table_lists_both_runs(two_runs, tiny_data):
    r = CliRunner().invoke(main, ["runs", str(two_runs)])
    assert r.exit_code == 0, r.output
    rows = {ln.split("│")[1].strip(): ln for ln in r.stdout.splitlines() if ln.count("│") > 5}
    assert set(rows) == {"a", "b"}, r.stdout
    cells = {k: [c.strip() for c in v.split("│")[1:-1]] for k, v in rows.items()}
    header = ["run", "arch", "data", "epochs", "best", "val loss", "val acc", "test acc"]
    header += ["test sens", "test spec", "test AUC", "size"]
    assert all(h in r.stdout for h in header)
    a, b = cells["a"], cells["b"]
    assert a[1] == b[1] == "smallcnn" and a[2] == str(tiny_data)
    assert (a[3], b[3]) == ("2", "1")
    history = json.loads((two_runs / "a" / "history.json").read_text())
    assert a[4] == str(history["best_epoch"])
    best = next(e for e in history["epochs"] if e["epoch"] == history["best_epoch"])
    assert a[5] == f"{best['val_loss']:.4f}"
    stored = torch.load(two_runs / "a" / "best.pt", weights_only=True)["metrics"]["test"]
    assert a[7] == f"{stored['accuracy']:.3f}"
    assert b[7] == "-"  # never evaluated into its checkpoint
    assert a[11].endswith(("kB", "MB"))


@pytest.mark.slow
def test_runs_reads_metadata_without_loading_weights(two_runs, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    summaries = list_runs(two_runs)
    assert [s.path.name for s in summaries] == ["a", "b"]
    assert calls and all(c.get("mmap") and c.get("weights_only") for c in calls)
    assert summaries[0].test["n_images"] > 0 and summaries[1].test is None


@pytest.mark.slow
def test_runs_json_and_broken_runs(two_runs, tmp_path):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(two_runs, root)
    (root / "b" / "config.json").write_text("{")
    (root / "b" / "best.pt").write_bytes(b"not a checkpoint")
    r = CliRunner().invoke(main, ["runs", str(root), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [d["arch"] for d in data] == ["smallcnn", None]
    assert data[1]["problems"] and data[1]["epochs_run"] == 1
    r = CliRunner().invoke(main, ["runs", str(root)])
    assert r.exit_code == 0 and "(!)" in r.stdout and "config.json" in r.stdout


def test_runs_on_a_missing_folder_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["runs", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "is not a folder" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["runs", str(tmp_path)])
    assert r.exit_code == 0 and "no runs under" in r.output


def _rows(stdout):
    rows = [ln for ln in stdout.splitlines() if ln.count("│") > 5]
    cells = [[c.strip() for c in ln.split("│")[1:-1]] for ln in rows]
    return {c[0].removesuffix(" (!)"): c for c in cells if c[0] != "run"}


def test_runs_shows_the_best_epoch_best_pt_holds_not_one_history_names(two_runs, tmp_path):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(two_runs, root)
    # Killed with a better epoch held in memory: history.json (written every epoch) names it,
    # best.pt (written every --checkpoint-interval) holds an earlier one.
    best = torch.load(root / "a" / "best.pt", weights_only=True)
    history_path = root / "a" / "history.json"
    history = json.loads(history_path.read_text())
    other = next(e for e in history["epochs"] if e["epoch"] != best["epoch"])
    history["best_epoch"] = other["epoch"]
    history_path.write_text(json.dumps(history))
    r = CliRunner().invoke(main, ["runs", str(root)])
    assert r.exit_code == 0, r.output
    a = _rows(r.stdout)["a"]
    assert a[4] == str(best["epoch"]) and a[5] == f"{best['metrics']['val']['loss']:.4f}"
    out = " ".join(r.stdout.split())
    assert (
        f"it names epoch {other['epoch']} the best, but best.pt holds epoch {best['epoch']}" in out
    )
    [summary] = [s for s in list_runs(root) if s.path.name == "a"]
    assert summary.best_epoch == best["epoch"] and summary.problems


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("checkpoint list", "best.pt: unreadable: metrics.test.accuracy: should be a valid number"),
        ("checkpoint shared", "best.pt: unreadable: metrics is far larger than"),
        (
            "history text",
            "history.json: epochs.0.val_loss: should be a valid number (found 'oops')",
        ),
        ("config list", None),
    ],
)
def test_one_bad_run_is_shown_as_unreadable_and_the_others_listed(two_runs, tmp_path, where, says):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(two_runs, root)
    bad = root / "b"
    if where.startswith("checkpoint"):
        data = torch.load(bad / "best.pt", weights_only=True)
        accuracy = [0.9]
        if where == "checkpoint shared":  # a few hundred bytes; written out, billions of numbers
            for _ in range(15):
                accuracy = [accuracy] * 4
        data["metrics"]["test"] = {"accuracy": accuracy, "n_images": 12}
        torch.save(data, bad / "best.pt")
    elif where == "history text":
        history = json.loads((bad / "history.json").read_text())
        history["epochs"][0]["val_loss"] = "oops"
        (bad / "history.json").write_text(json.dumps(history))
    else:
        config = json.loads((bad / "config.json").read_text())
        config["model"]["arch"] = ["smallcnn"]
        (bad / "config.json").write_text(json.dumps(config))
    r = CliRunner().invoke(main, ["runs", str(root)])
    assert r.exit_code == 0 and r.exception is None, r.output
    rows = _rows(r.stdout)
    assert set(rows) == {"a", "b"} and rows["a"][1] == "smallcnn" and rows["a"][7] != "-"
    out = " ".join(r.stdout.split())
    if says is not None:
        assert "(!)" in r.stdout and says in out
    r = CliRunner().invoke(main, ["runs", str(root), "--json"])
    assert r.exit_code == 0 and r.exception is None, r.output
    data = json.loads(r.stdout)
    assert len(r.stdout) < 20_000 and [d["path"].rsplit("/", 1)[1] for d in data] == ["a", "b"]
    assert data[0]["test"]["accuracy"] is not None and data[0]["problems"] == []


def test_runs_reads_best_pt_as_load_checkpoint_does_safetensors_included(two_runs, tmp_path):
    """best.pt is read by the checkpoint reader (told apart by content), not `torch.load` alone."""
    import shutil

    from skincls.models.checkpoint import convert_checkpoint

    root = tmp_path / "runs"
    shutil.copytree(two_runs, root)
    before = {s.path.name: s for s in list_runs(root)}
    best = root / "a" / "best.pt"
    convert_checkpoint(best, tmp_path / "a.safetensors")
    (tmp_path / "a.safetensors").replace(best)  # a safetensors checkpoint, named best.pt
    (root / "b" / "best.pt").write_bytes(b"")
    after = {s.path.name: s for s in list_runs(root)}
    a, b = after["a"], after["b"]
    assert a.problems == [] and a.test is not None and a.test == before["a"].test
    assert (a.best_epoch, a.val_loss) == (before["a"].best_epoch, before["a"].val_loss)
    assert b.problems == [
        "best.pt is empty (0 bytes), e.g. from an interrupted copy; use an intact copy of the "
        "checkpoint, or train again"
    ]
