"""The library names options as Python spells them; the CLI names the same options as its flags.

Each message is checked both ways: a library call (no `--` in sight) and the command that makes it
(the flags the user typed, word for word as ever). And the rule is checked, not remembered: no flag
literal in the library, and every option it names has a flag in `skincls.cli._flags`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import skincls
from skincls.cli import main
from skincls.cli._flags import COMMANDS, FLAGS, spell_flags
from skincls.config import load_config
from skincls.data.registry import get_dataset
from skincls.errors import ConfigError, DataError, option_items, spell_options
from skincls.runtime import resolve_device

LIBRARY = Path(skincls.__file__).parent
# Library files allowed to hold flag literals: none.
NOT_YET: set[str] = set()
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _library_files():
    for path in sorted(LIBRARY.rglob("*.py")):
        rel = path.relative_to(LIBRARY).as_posix()
        if not rel.startswith("cli/") and rel not in NOT_YET:
            yield rel, ast.parse(path.read_text(encoding="utf-8"))


def _cli_error(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    return " ".join(r.output.split())


def test_no_flag_literal_in_the_library():
    found = [
        f"{rel}:{node.lineno}: {node.value!r}"
        for rel, tree in _library_files()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if FLAG.search(node.value)
    ]
    assert not found, "name options with skincls.errors.opt(...), not flags:\n" + "\n".join(found)


def _named(node: ast.Call) -> list[tuple[str, str | None]]:
    """The (name, value) pairs an `opt(...)`/`call(...)` in the library names."""
    args = [a.value for a in node.args if isinstance(a, ast.Constant)]
    assert len(args) == len(node.args), f"spell options as constants: {ast.unparse(node)}"
    if node.func.id == "call":
        assert args[0] in COMMANDS, f"no command for {args[0]!r}: add it to cli/_flags.py"
        args = args[1:]
    pairs = [(s.partition("=")[0], s.partition("=")[2] or None) for s in args if s != "..."]
    for kw in node.keywords:
        value = ast.unparse(kw.value) if isinstance(kw.value, ast.Constant) else None
        if kw.arg == "value":
            pairs = [(pairs[0][0], value)]
        else:
            pairs.append((kw.arg, value))
    return pairs


def test_every_option_the_library_names_has_a_flag():
    calls = [
        node
        for _, tree in _library_files()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("opt", "call")
    ]
    assert len(calls) > 40
    for node in calls:
        for name, value in _named(node):
            assert spell_flags(None, [(name, value)]).startswith("--"), ast.unparse(node)


def test_flags_follow_the_python_spelling():
    def cli(marker: str) -> str:
        return spell_flags(None, option_items(marker))

    assert cli("data_dir") == "--data-dir"
    assert cli("resume=True") == "--resume"
    assert cli("grad_cam=False") == "--no-grad-cam"
    assert cli("weights=FILE, freeze='none'") == "--weights FILE --freeze none"
    assert cli("device='cuda:1'") == "--device cuda:1"
    assert cli("model.freeze=0, model.freeze='backbone'") == "--train-stages 0 --freeze backbone"
    assert (
        spell_flags("fetch", option_items("..., data_dir='d x'")) == "skincls fetch --data-dir d x"
    )
    with pytest.raises(KeyError):
        cli("no_such_option")


def test_flags_of_config_keys_agree_with_the_train_options():
    from skincls.cli.train import _TRAIN_OPTIONS

    first: dict[str, str] = {}
    for flag, key, _ in _TRAIN_OPTIONS:
        first.setdefault(key, flag.split("/")[0])
    keys = [k for k in FLAGS if "." in k.split("=")[0] or k == "out"]
    assert keys and all(FLAGS[k] == first[k] for k in keys if "=" not in k), keys


def test_evaluating_without_data_names_the_call_or_the_command(ckpt, tmp_path):
    data = tmp_path / "nothing"
    with pytest.raises(DataError) as err:
        skincls.evaluate_checkpoint(ckpt, data)
    assert str(err.value) == (
        f"no manifest.csv in {data}: prepare the data first, e.g. "
        f"`skincls.fetch(data_dir={str(data)!r})` (or `synthetic=500` for offline data)"
    )
    line = _cli_error(["evaluate", str(ckpt), "--data-dir", str(data)])
    assert line == (
        f"Error: no manifest.csv in {data}: prepare the data first, e.g. "
        f"`skincls fetch --data-dir {data}` (or `--synthetic 500` for offline data)"
    )


def test_fetch_options_that_do_not_fit_are_named_as_given(tmp_path):
    with pytest.raises(DataError) as err:
        skincls.fetch(tmp_path / "d", synthetic=40, task="multiclass")
    assert str(err.value) == (
        "task and malignant need diagnoses: use synthetic=N, dataset='ham10000' for a "
        "HAM10000-like synthetic dataset"
    )
    with pytest.raises(DataError) as err:
        skincls.fetch(tmp_path / "d", synthetic=40, task="multiclass", malignant=["mel"])
    assert str(err.value) == "malignant applies to the binary task, not to task='multiclass'"

    args = ["fetch", "--data-dir", str(tmp_path / "d"), "--synthetic", "40", "--quiet"]
    assert _cli_error([*args, "--task", "multiclass"]) == (
        "Error: --task and --malignant need diagnoses: use --synthetic N --dataset ham10000 for a "
        "HAM10000-like synthetic dataset"
    )
    assert _cli_error([*args, "--task", "multiclass", "--malignant", "mel"]) == (
        "Error: --malignant applies to the binary task, not to --task multiclass"
    )


def test_a_missing_device_is_named_as_given(monkeypatch, ckpt, tiny_data):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda:1")
    assert str(err.value).startswith("device='cuda:1' was asked for, but this PyTorch sees no CUDA")
    assert str(err.value).endswith("; use device='cpu' or auto")

    image = next((tiny_data / "images" / "test").rglob("*.jpg"))
    line = _cli_error(["predict", str(ckpt), str(image), "--device", "cuda:1"])
    assert line.startswith("Error: --device cuda:1 was asked for, but this PyTorch sees no CUDA")
    assert line.endswith("; use --device cpu or auto")


def test_a_bad_config_value_is_named_by_its_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"train.batch_size": 5000})
    assert str(err.value) == "train.batch_size: must be at most 4096 (got 5000)"


def test_dataset_notes_name_the_call_or_the_command():
    notes = spell_options(get_dataset("siim-isic-melanoma-classification").notes)
    assert "run `skincls.fetch(source_dir=DIR, dataset='siim-isic-melanoma-classification')`" in (
        notes
    )
    assert "or use dataset='isic2020' (the same images, resized)" in notes and "--" not in notes

    r = CliRunner().invoke(main, ["datasets"])
    assert r.exit_code == 0
    shown = " ".join(r.output.split())
    assert "run `skincls fetch --source-dir DIR --dataset siim-isic-melanoma-classification`" in (
        shown
    )
    assert "or use --dataset isic2020 (the same images, resized)" in shown
    assert "see --reference). The default." in shown
