"""What every command shares: the console and the translation of library errors into one-line messages."""

from __future__ import annotations

import functools
import logging

import click
from rich.console import Console

from ..errors import SkinclsError

console = Console(stderr=False)

precision_option = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Model precision. auto: bf16 on CUDA where supported and on CPUs with native bf16 "
    "(AVX-512 BF16/AMX), else fp32.",
)


class _EchoHandler(logging.Handler):
    """Library messages (a stale lock taken over, a checkpoint updated...) as one stderr line."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)  # sys.stderr looked up now: CliRunner sees it


def show_library_messages() -> None:
    """Print the `skincls` loggers' messages (info and up) on stderr, once per process."""
    logger = logging.getLogger("skincls")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler(logging.INFO))


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
