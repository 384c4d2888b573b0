"""What every command shares: the console and the translation of library errors into one-line messages."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import re
from collections.abc import Callable, Iterator

import click
from rich.console import Console, ConsoleDimensions
from rich.rule import Rule

from ..errors import Interrupted, SkinclsError, option_spelling
from ._flags import spell_flags

__all__ = ["PIPE_WIDTH", "console", "err_console", "friendly_errors", "progress_bar"]

# Output to a file or pipe has no screen to fit: lines are never wrapped, tables never squeezed.
PIPE_WIDTH = 1000


class _Console(Console):
    """A rich console that wraps to the terminal, and not at all when written to a file or pipe.

    Rich otherwise assumes 80 columns off a terminal: sentences break mid-way and table headers
    are truncated in `skincls ... > log.txt`.
    """

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or self._width is not None:
            return size
        return ConsoleDimensions(PIPE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)

    def rule(self, title="", *, characters="─", style="rule.line", align="center") -> None:
        if self.is_terminal:
            super().rule(title, characters=characters, style=style, align=align)
        else:  # a full-width rule would be PIPE_WIDTH characters long
            self.print(Rule(title, characters=characters, style=style, align=align), width=80)


console = _Console(stderr=False)
# Diagnostics (device line, progress): stderr, so `--json` output on stdout stays pure.
err_console = _Console(stderr=True)

precision_option = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="Model precision. auto: bf16 on CUDA where supported and on CPUs with native bf16 "
    "(AVX-512 BF16/AMX), else fp32.",
)


def _columns(ctx, param, value: str | None) -> list[str] | None:
    if not value:
        return None
    cols = [c.strip() for c in value.split(",") if c.strip()]
    if not cols:
        raise click.BadParameter("name at least one manifest column, e.g. sex,age_band")
    return cols


def by_options(fn):
    """`--by COLUMNS` and `--min-group-n N`: subgroup reports (evaluate, cv)."""
    fn = click.option(
        "--min-group-n",
        type=click.IntRange(min=1),
        default=30,
        show_default=True,
        help="Flag groups with fewer images (shown, left out of the largest gap).",
    )(fn)
    return click.option(
        "--by",
        callback=_columns,
        default=None,
        metavar="COLUMNS",
        help="Report each group of these manifest columns (comma-separated, e.g. "
        "sex,age_band,site,skin_tone): n, ROC-AUC, sensitivity, specificity at the one threshold, "
        "with CIs, and the largest gap. age_band is <30/30-49/50-69/>=70 from age.",
    )(fn)


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


@contextlib.contextmanager
def progress_bar(
    enabled: bool = True, min_total: int = 64
) -> Iterator[Callable[[int, int, str], None] | None]:
    """A `progress(done, total, what)` callback drawing a bar on stderr, or None.

    None off a terminal (a log file gets no bar frames) or when disabled; a task's bar appears once
    it has at least `min_total` items, so a few images print no flicker.
    """
    if not (enabled and err_console.is_terminal):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, int] = {}

    def update(done: int, total: int, what: str) -> None:
        if what not in tasks:
            if total < min_total:
                return
            if not tasks:
                bar.start()
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done, total=total)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()


def friendly_errors(fn):
    """Turn library and OS errors into one-line Click errors (no traceback).

    While the command runs, the options that library messages name read as this CLI's flags
    (`skincls.errors.opt`, `_flags.FLAGS`). Errors raised in DataLoader worker processes arrive
    re-raised with the worker's whole traceback as their message; only the original error's own
    line is shown. Other exceptions are bugs and keep their traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with option_spelling(spell_flags):  # str(exc) below too: it spells the flags
            try:
                return fn(*args, **kwargs)
            except SkinclsError as exc:
                raise click.ClickException(_unwrap_worker(str(exc))[1]) from exc
            except OSError as exc:
                raise click.ClickException(os_error_message(exc)) from exc
            except KeyboardInterrupt as exc:  # an `Interrupted` run says what it kept
                message = str(exc) if isinstance(exc, Interrupted) else "interrupted"
                raise click.ClickException(message) from None

    return wrapper


# What to do about an OS error, by errno; the rest get the generic advice.
_ADVICE = {
    errno.EACCES: "check its permissions, or choose another path",
    errno.EPERM: "check its permissions, or choose another path",
    errno.ENOSPC: "free some disk space, or choose a location on another disk, and run again",
    errno.EDQUOT: "your disk quota is used up; free some space and run again",
    errno.EEXIST: "it is already there; remove it or choose another path",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give a file path",
    errno.ENOENT: "check that the path exists",
    errno.EROFS: "that file system is read-only; choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer --num-workers",
    errno.ENFILE: "too many open files; raise the limit or use fewer --num-workers",
    errno.ENOMEM: "not enough memory; use a smaller --batch-size or fewer --num-workers",
    errno.EIO: "the disk reported an input/output error; check the disk",
}


def os_error_message(exc: OSError) -> str:
    """One line for an OS error: what failed, on which path, and what to do about it."""
    kind, wrapped = _unwrap_worker(str(exc))
    if kind is not None:  # from a worker: rebuild the errno from the original error's text
        found = re.match(r"\[Errno (\d+)\] (.*?)(?:: '(.*)')?$", wrapped)
        if found is None:
            return f"{kind} in a data-loading worker: {wrapped}"
        exc = OSError(int(found[1]), found[2], found[3])
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = f": {' → '.join(map(str, paths))}" if paths else ""
    advice = _ADVICE.get(exc.errno, "check the path and try again")
    return f"{reason}{where} ({advice})"


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def _unwrap_worker(message: str) -> tuple[str | None, str]:
    """(original exception type, its message) for a DataLoader worker's wrapped error, else (None, message)."""
    found = _WORKER.match(message)
    if found is None:
        return None, message
    # The traceback's last line is "module.Type: message" of the original error.
    last = next((ln for ln in reversed(message.splitlines()) if ln.strip()), "")
    text = last.split(": ", 1)[1] if ": " in last else last
    return found[1], text
