"""Checkpoint checks: every malformed field, unreadable file and non-finite weight is one clear line."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from click.testing import CliRunner

from skincls.cli import main
from skincls.errors import CheckpointError
from skincls.models.checkpoint import load_checkpoint, save_checkpoint, update_checkpoint
from skincls.models.classifier import create_model


def _set(dotted, value):
    def edit(data):
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value

    return edit


def _drop(key):
    return lambda data: data.pop(key)


def _poison(value):
    def edit(data):
        name = next(k for k, v in data["state_dict"].items() if v.is_floating_point())
        data["state_dict"][name] = data["state_dict"][name].clone().fill_(value)

    return edit


def _shared(depth, width=2):
    """Nested lists of shared references: bytes in a pickle, width**depth numbers written out."""
    node = [0.5]
    for _ in range(depth):
        node = [node] * width
    return node


# (id, edit of a valid checkpoint dict, text the one-line error must hold)
MALFORMED = [
    ("no classes", _drop("classes"), "classes is missing"),
    ("one class", _set("classes", ["benign"]), "classes"),
    ("duplicate classes", _set("classes", ["benign", "benign"]), "distinct"),
    ("classes as text", _set("classes", "benign,malignant"), "classes"),
    ("more classes than outputs", _set("classes", ["a", "b", "c"]), "2 outputs but 3 classes"),
    ("no model", _drop("model"), "model is missing"),
    ("arch not text", _set("model.arch", 3), "model.arch"),
    ("head as text", _set("model.head", "16"), "model.head"),
    ("dropout above 1", _set("model.dropout", 1.5), "model.dropout"),
    ("unknown freeze", _set("model.freeze", "sometimes"), "model.freeze"),
    ("num_classes mismatch", _set("model.num_classes", 3), "num_classes is 3"),
    ("no preprocessing", _drop("preprocessing"), "preprocessing is missing"),
    ("huge crop", _set("preprocessing.crop_size", 10**6), "preprocessing.crop_size"),
    ("zero crop", _set("preprocessing.crop_size", 0), "preprocessing.crop_size"),
    ("negative resize", _set("preprocessing.resize_size", -1), "preprocessing.resize_size"),
    ("two-channel mean", _set("preprocessing.mean", [0.5, 0.5]), "preprocessing.mean"),
    ("zero std", _set("preprocessing.std", [0.0, 1.0, 1.0]), "preprocessing.std"),
    ("unknown interpolation", _set("preprocessing.interpolation", "magic"), "interpolation"),
    ("threshold above 1", _set("threshold", 1.5), "threshold"),
    ("negative threshold", _set("threshold", -0.1), "threshold"),
    ("NaN threshold", _set("threshold", math.nan), "threshold"),
    ("threshold as text", _set("threshold", "0.5"), "threshold"),
    ("zero temperature", _set("temperature", 0.0), "temperature"),
    ("negative temperature", _set("temperature", -1.0), "temperature"),
    ("infinite temperature", _set("temperature", math.inf), "temperature"),
    ("NaN temperature", _set("temperature", math.nan), "temperature"),
    ("metrics as list", _set("metrics", [1, 2]), "metrics"),
    ("metric as a list", _set("metrics", {"test": {"accuracy": [0.9]}}), "metrics.test.accuracy"),
    ("metric as text", _set("metrics", {"val": {"loss": "oops"}}), "metrics.val.loss"),
    ("infinite metric", _set("metrics", {"test": {"loss": math.inf}}), "metrics.test.loss"),
    (
        "metric of shared lists",
        _set("metrics", {"test": {"accuracy": _shared(12, 4)}}),
        "far larger",
    ),
    ("metric as a bool", _set("metrics", {"test": {"n_images": True}}), "metrics.test.n_images"),
    ("tensor in metadata", _set("calibration", torch.zeros(3)), "calibration: should be plain"),
    ("deep metadata", _set("threshold_info", _shared(40, 1)), "threshold_info is nested"),
    ("huge integer", _set("metrics", {"test": {"n_images": 10**600}}), "sensible size"),
    ("tiny temperature", _set("temperature", 1e-300), "temperature"),
    ("huge temperature", _set("temperature", 1e4), "temperature"),
    ("tiny std", _set("preprocessing.std", [1e-30, 0.2, 0.2]), "preprocessing.std.0"),
    ("huge mean", _set("preprocessing.mean", [0.5, 1e30, 0.5]), "preprocessing.mean.1"),
    ("no weights", _drop("state_dict"), "state_dict is missing"),
    ("weights not tensors", _set("state_dict", {"w": 1}), "state_dict"),
    ("NaN weights", _poison(math.nan), "NaN or inf"),
    ("infinite weights", _poison(math.inf), "NaN or inf"),
]


@pytest.mark.parametrize("edit,needle", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_checkpoint_field_is_one_line_error(untrained_ckpt_file, tmp_path, edit, needle):
    data = copy.deepcopy(torch.load(untrained_ckpt_file, weights_only=True))
    edit(data)
    path = tmp_path / "bad.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert needle in message and str(path) in message and "\n" not in message

    image = tmp_path / "x.jpg"  # never read: the checkpoint is refused first
    r = CliRunner().invoke(main, ["predict", str(path), str(image), "--device", "cpu"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1
    assert needle in " ".join(r.output.split())


def _one_line_cli_error(args):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1, r.output
    return " ".join(r.output.split())


def test_file_that_is_no_checkpoint_says_what_it_is(tmp_path):
    rand = tmp_path / "random.pt"
    # Random bytes, but never starting like a zip or a pickle (1 in 256 urandom draws starts with
    # pickle's 0x80 and is then read as a damaged pickle: a flaky test).
    rand.write_bytes(b"\x00" + os.urandom(2047))
    out = _one_line_cli_error(["predict", str(rand), str(tmp_path)])
    assert "not a skincls checkpoint" in out and "not a file written by torch.save" in out
    assert "unpickling" not in out  # random bytes are no security threat; don't say they are

    empty = tmp_path / "empty.pt"
    empty.touch()
    out = _one_line_cli_error(["predict", str(empty), str(tmp_path)])
    assert "is empty (0 bytes)" in out and not out.rstrip().endswith(":")

    truncated = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    out = _one_line_cli_error(["predict", str(truncated), str(tmp_path)])
    assert "truncated or damaged" in out


def test_directory_without_best_pt_is_not_called_missing(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "other.pt").touch()
    out = _one_line_cli_error(["predict", str(tmp_path / "run"), str(tmp_path)])
    assert "is a directory without a best.pt" in out and "other.pt" in out
    assert "does not exist" not in out


@pytest.mark.slow
def test_run_directory_stands_for_its_best_pt(untrained_ckpt_file, tiny_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(untrained_ckpt_file.read_bytes())
    assert load_checkpoint(run).path == run / "best.pt"
    image = next((tiny_data / "images" / "test").rglob("*.jpg"))
    r = CliRunner().invoke(main, ["predict", str(run), str(image), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "best.pt" in " ".join(r.output.split())  # the table names the file it used
    r = CliRunner().invoke(
        main,
        ["evaluate", str(run), "--data-dir", str(tiny_data), "--bootstrap", "0", "--no-save"],
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "m.pt"
    r = CliRunner().invoke(main, ["export", str(run), "--format", "torchscript", "--out", str(out)])
    assert r.exit_code == 0 and out.is_file(), r.output


def test_non_finite_weights_and_bad_metadata_are_never_written(tmp_path):
    model = create_model("smallcnn", weights="none", head=(8,), freeze="none")
    with torch.no_grad():
        model.head[-1].weight.fill_(math.nan)
    path = tmp_path / "nan.pt"
    with pytest.raises(CheckpointError, match=r"refusing to write .*NaN or inf"):
        save_checkpoint(path, model, classes=["benign", "malignant"])
    assert not path.exists()

    model = create_model("smallcnn", weights="none", head=(8,), freeze="none")
    save_checkpoint(path, model, classes=["benign", "malignant"])
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="temperature"):
        update_checkpoint(path, temperature=0.0)
    with pytest.raises(CheckpointError, match="threshold"):
        update_checkpoint(path, threshold=2.0)
    assert path.read_bytes() == before and load_checkpoint(path).temperature == 1.0


def test_ensemble_members_are_checked_too(tmp_path):
    from skincls.models.ensemble import EnsembleClassifier

    torch.manual_seed(0)
    members = [
        create_model("smallcnn", weights="none", head=h, freeze="none") for h in ((8,), (4, 4))
    ]
    path = tmp_path / "ens.pt"
    save_checkpoint(path, EnsembleClassifier(members, [1.0, 2.0]), classes=["benign", "malignant"])
    assert load_checkpoint(path).is_ensemble  # members with different heads: no shared "head"
    data = torch.load(path, weights_only=True)
    data["model"]["members"][1]["dropout"] = 2.0
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"model\.members\.1\.dropout"):
        load_checkpoint(path)


def test_temperature_limits_hold_every_temperature_calibration_can_fit(tmp_path):
    from skincls.evaluation.calibration import TEMPERATURE_BOUNDS
    from skincls.models.checkpoint_checks import TEMPERATURE_LIMITS
    from skincls.models.ensemble import EnsembleClassifier

    lo, hi = TEMPERATURE_LIMITS
    assert lo <= TEMPERATURE_BOUNDS[0] and TEMPERATURE_BOUNDS[1] <= hi
    members = [create_model("smallcnn", weights="none", head=(8,), freeze="none") for _ in "ab"]
    path = tmp_path / "ens.pt"
    for temps in ([TEMPERATURE_BOUNDS[0], TEMPERATURE_BOUNDS[1]], [lo, hi]):
        save_checkpoint(path, EnsembleClassifier(members, temps), classes=["benign", "malignant"])
        assert load_checkpoint(path).is_ensemble
    data = torch.load(path, weights_only=True)
    data["state_dict"]["temperatures"] = torch.tensor([1.0, 1e-30])
    torch.save(data, path)
    with pytest.raises(
        CheckpointError, match=r"member temperatures should be within \[0\.01, 100\]"
    ):
        load_checkpoint(path)
