"""Errors a user can act on: the CLI shows their message as one line, without a traceback.

A message names an option the way a Python caller spells it, with `opt`: `opt("data_dir")`,
`opt("resume=True")`, `opt("weights=FILE")`, and a call with `call`: `call("fetch", data_dir="d")`.
Such text reads as written (`data_dir`, `resume=True`, `skincls.fetch(data_dir='d')`); while the
command line runs a command, it reads as that command and its flags, by the one table the CLI
installs with `option_spelling` (`skincls.cli._flags`). So the library never names a flag its
Python caller did not type, and the CLI's messages keep naming the flags its user did. Text that
leaves the library other than as an error's message (a per-image error, a note) is spelled when it
is made, with `spell_options`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Interrupted",
    "LockError",
    "ModelError",
    "SkinclsError",
    "TrainingError",
    "call",
    "opt",
    "option_items",
    "option_spelling",
    "spell_options",
]

Options = Sequence[tuple[str, "str | None"]]
Spelling = Callable[["str | None", Options], str]
"""How a marker reads: (the function of a `call`, or None for `opt`; its `(name, value)` pairs)."""

_STRING = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
# {opt:ARGS} or {call:FUNCTION:ARGS}, ARGS being `name` or `name=value` items joined by ", " (a
# value: a Python literal, whose quoted strings may hold anything, or a placeholder such as FILE).
_MARKER = re.compile(r"\{(?:opt|call:(\w+)):((?:" + _STRING + r"|[^{}'\"])+)\}")
_ITEM = re.compile(r"\s*([A-Za-z_][\w.]*|\.\.\.)(?:=(" + _STRING + r"|[^,]*))?\s*(?:,|$)")
_NO_VALUE = object()


def opt(*spellings: str, value: object = _NO_VALUE) -> str:
    """Name options as Python spells them: `opt("data_dir")`, `opt("resume=True")`,
    `opt("weights=FILE")`, `opt("synthetic=N", "dataset='ham10000'")`; `opt("device", value=name)`
    spells a str, number, bool or None by its repr (`device='cuda:1'`).

    The text reads as written (several joined by ", "), or as the CLI's flags while it runs a
    command.
    """
    if value is not _NO_VALUE:
        (name,) = spellings
        spellings = (f"{name}={value!r}",)
    return "{opt:" + ", ".join(spellings) + "}"


def call(function: str, *spellings: str, **values: object) -> str:
    """Name a call of a public skincls function: `call("fetch", data_dir="data")` reads
    `skincls.fetch(data_dir='data')`, or as its command and flags while the CLI runs one.
    Spellings as for `opt`; "..." stands for the rest."""
    items = [*spellings, *(f"{name}={v!r}" for name, v in values.items())] or ["..."]
    return f"{{call:{function}:" + ", ".join(items) + "}"


def option_items(inner: str) -> list[tuple[str, str | None]]:
    """The `(name, value)` pairs of a marker's arguments, e.g. "resume=True, out" →
    `[("resume", "True"), ("out", None)]`."""
    items, pos = [], 0
    while pos < len(inner):
        found = _ITEM.match(inner, pos)
        if found is None or found.end() == pos:
            raise ValueError(f"not an option marker: {inner!r}")
        items.append((found[1], found[2].strip() if found[2] is not None else None))
        pos = found.end()
    return items


def _python(function: str | None, items: Options) -> str:
    args = ", ".join(name if value is None else f"{name}={value}" for name, value in items)
    return args if function is None else f"skincls.{function}({args})"


_spelling: Spelling = _python


def spell_options(text: str) -> str:
    """`text` with its `opt` and `call` markers spelled as in force: Python's, unless the CLI's."""
    return _MARKER.sub(_spell_marker, text) if "{opt:" in text or "{call:" in text else text


def _spell_marker(marker: re.Match) -> str:
    try:
        return _spelling(marker[1], option_items(marker[2]))
    except (ValueError, KeyError):  # a malformed marker or an unknown option: never hide the error
        return _python(marker[1], [(marker[2], None)])


@contextlib.contextmanager
def option_spelling(spelling: Spelling) -> Iterator[None]:
    """Spell markers with `spelling` inside the block (the CLI: as flags); then as before."""
    global _spelling
    before, _spelling = _spelling, spelling
    try:
        yield
    finally:
        _spelling = before


class SkinclsError(Exception):
    """Base class: the message says what went wrong and what to do about it.

    Its text may name options with `opt` and `call`; `str()` spells them (see the module docs).
    """

    def __str__(self) -> str:
        return spell_options(super().__str__())


class ConfigError(SkinclsError):
    """A configuration file or option is invalid."""


class DataError(SkinclsError):
    """The dataset is missing, unreadable or inconsistent."""


class ModelError(SkinclsError):
    """A model cannot be built or its weights cannot be loaded."""


class CheckpointError(SkinclsError):
    """A checkpoint cannot be read, or is not a skincls checkpoint."""


class TrainingError(SkinclsError):
    """Training cannot go on, e.g. the loss or the weights became NaN or infinite (diverged)."""


class LockError(SkinclsError):
    """A data dir or run dir is in use by another skincls process."""


class Interrupted(KeyboardInterrupt):
    """A run was interrupted (Ctrl-C); the message says what was kept and how to go on.

    A `KeyboardInterrupt`, not a `SkinclsError`: `except Exception` must not swallow an interruption.
    Its text names options as `SkinclsError`'s does.
    """

    def __str__(self) -> str:
        return spell_options(super().__str__())
