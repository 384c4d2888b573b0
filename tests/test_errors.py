"""Options named in messages: as Python spells them, or in the spelling a caller (the CLI) installs."""

from __future__ import annotations

import pickle

import pytest

from skincls.errors import (
    DataError,
    SkinclsError,
    call,
    opt,
    option_items,
    option_spelling,
    spell_options,
)


def _upper(function, items):
    """A stand-in spelling: names upper-cased, values dropped, a call as CALL:NAME."""
    names = " ".join(name.upper() for name, _ in items)
    return names if function is None else f"CALL:{function} {names}"


def test_options_read_as_python_spells_them():
    assert str(DataError(f"give {opt('resume=True')} or {opt('out')}")) == "give resume=True or out"
    assert spell_options(opt("device", value="cuda:1")) == "device='cuda:1'"
    assert spell_options(opt("folds", value=3)) == "folds=3"
    assert spell_options(opt("synthetic=N", "dataset='ham10000'")) == (
        "synthetic=N, dataset='ham10000'"
    )
    assert spell_options(call("fetch", "source_dir=DIR", data_dir="d")) == (
        "skincls.fetch(source_dir=DIR, data_dir='d')"
    )
    assert spell_options(call("train_from_config", "...", resume=True)) == (
        "skincls.train_from_config(..., resume=True)"
    )


def test_values_with_commas_quotes_and_braces_stay_whole():
    path = "a, b='c'}{opt:x}\\"
    text = opt("data_dir", value=path)
    assert option_items(text[len("{opt:") : -1]) == [("data_dir", repr(path))]
    with option_spelling(_upper):
        assert spell_options(f"[{text}] {opt('out')}") == "[DATA_DIR] OUT"


def test_an_installed_spelling_applies_inside_its_block_only():
    err = SkinclsError(f"use {opt('synthetic=N', 'task')} or {call('fetch', data_dir='d')}")
    with option_spelling(_upper):
        assert str(err) == "use SYNTHETIC TASK or CALL:fetch DATA_DIR"
        with option_spelling(lambda f, items: "inner"):
            assert str(err) == "use inner or inner"
        assert str(err) == "use SYNTHETIC TASK or CALL:fetch DATA_DIR"
    assert str(err) == "use synthetic=N, task or skincls.fetch(data_dir='d')"
    with pytest.raises(RuntimeError), option_spelling(_upper):
        raise RuntimeError("a failing block still restores the spelling")
    assert str(err) == "use synthetic=N, task or skincls.fetch(data_dir='d')"


def test_an_option_the_spelling_does_not_know_shows_as_python_names_it():
    def strict(function, items):
        raise KeyError(items[0][0])

    with option_spelling(strict):
        assert str(DataError(f"see {opt('nope=1')}")) == "see nope=1"
        assert str(DataError(f"run {call('fetch', 'a')}")) == "run skincls.fetch(a)"


def test_text_without_markers_is_left_as_it_is():
    text = "a {path} with {braces} and {opt:} and --flags"
    assert str(DataError(text)) == text


def test_an_error_keeps_its_markers_through_pickling():
    err = pickle.loads(pickle.dumps(DataError(f"give another {opt('out')}")))
    assert str(err) == "give another out"
    with option_spelling(_upper):
        assert str(err) == "give another OUT"
