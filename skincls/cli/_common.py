"""What every command shares: the console and the translation of library errors into one-line messages."""

from __future__ import annotations

import functools

import click
from rich.console import Console

from ..errors import SkinclsError

console = Console(stderr=False)


def friendly_errors(fn):
    """Turn library errors into one-line Click errors (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SkinclsError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None

    return wrapper
