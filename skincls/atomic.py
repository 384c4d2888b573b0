"""Atomic file writes: a crash or a failed check never leaves a half-written file under the real name.

The temporary file is `.<name>.<pid>.<random>.tmp` beside the target: a killed writer (SIGKILL, power
loss) leaves it behind, and `remove_stale_temps` recognises it by that name and removes it later.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write", "is_temp_name", "pid_alive", "remove_stale_temps"]

# `.<target name>.<writer pid>.<mkstemp's 8 characters>.tmp`; before the pid was added: no pid.
_TEMP = re.compile(r"^\.(?P<name>.+?)(?:\.(?P<pid>\d+))?\.(?P<rand>[a-z0-9_]{8})\.tmp$")


def _file_mode() -> int:
    # mkstemp creates files as 0600; give them the permissions a plain open() would (0666 - umask).
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`.

    On any exception (a failed parity check, Ctrl-C) the temporary file is removed and `path` keeps
    its previous content. The rename is atomic because both live in the same folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, _file_mode())
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` that only replaces `path` once the `with` block finishes without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as fh:
        yield fh


def is_temp_name(name: str) -> bool:
    """Whether a file name is one `atomic_path` gives its temporary files."""
    return _TEMP.match(name) is not None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # e.g. Windows: no signal 0; assume alive rather than delete a live write
        return True
    return True


def remove_stale_temps(folder: str | Path, *, locked: bool = False) -> list[tuple[Path, int]]:
    """Delete temporary files of `atomic_path` in `folder` whose writer is gone; return (path, bytes).

    Only files named the way `atomic_path` names them are touched, never this process's own. A
    temp counts as stale when its writer's pid no longer runs, or, with `locked` (the caller holds
    the folder's `skincls.locks` lock, so no other skincls process writes there), always.
    """
    folder = Path(folder)
    removed: list[tuple[Path, int]] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in sorted(entries):
        m = _TEMP.match(p.name)
        if m is None or p.is_symlink() or not p.is_file():
            continue
        pid = int(m["pid"]) if m["pid"] else None
        if pid == os.getpid():
            continue
        if not locked and (pid is None or pid_alive(pid)):
            continue
        try:
            size = p.stat().st_size
            p.unlink()
        except OSError:
            continue
        removed.append((p, size))
    return removed
