"""CSV cells: text a spreadsheet would run as a formula (CSV injection), and file names that are not UTF-8.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to a spreadsheet
(OWASP, "CSV Injection"); a plain number such as `-1` is not. Class names and ids that skincls reads
back (the manifest) are refused at fetch instead of altered (`formula_start`); paths are made safe
by a leading `./` (the same file), other text by a leading `'` (`safe_path`, `safe_text`).
"""

from __future__ import annotations

import re

__all__ = ["formula_start", "printable", "safe_path", "safe_text"]

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def formula_start(text: str) -> str | None:
    """The character that makes `text` a spreadsheet formula, or None (plain numbers are safe)."""
    if text.startswith(_FORMULA_STARTS) and not _NUMBER.fullmatch(text):
        return text[0]
    return None


def printable(text: str) -> str:
    """`text` with the bytes of an undecodable file name shown as `\\xff` escapes (valid UTF-8)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def safe_path(path: str) -> str:
    """A relative path for a CSV cell: `./` before a formula start (the same file), escapes as above."""
    path = printable(path)
    return f"./{path}" if formula_start(path) else path


def safe_text(text: str) -> str:
    """Free text for a CSV cell: a `'` before a formula start, as spreadsheets expect it."""
    text = printable(text)
    return f"'{text}" if formula_start(text) else text
