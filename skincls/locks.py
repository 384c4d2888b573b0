"""Folder locks and file stamps: one writer per data dir or run dir, and no write over a changed file.

A lock is an OS file lock (`filelock`, flock on Unix) on `<folder>/.skincls.lock.flock`, plus the
owner's record in `<folder>/.skincls.lock` (pid, host, command, start time) for the error message.
The OS drops a dead process's lock by itself; its record stays behind, which is how the next owner
knows it took over a stale lock (and says so).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .atomic import atomic_write, pid_alive, remove_stale_temps
from .errors import LockError, SkinclsError

__all__ = [
    "LOCK_FILES",
    "LOCK_NAME",
    "DirLock",
    "FileStamp",
    "clean_stale_temps",
    "file_stamp",
    "lock_dir",
]

LOCK_NAME = ".skincls.lock"  # the owner's record: what a second writer is told
_FLOCK_NAME = LOCK_NAME + ".flock"  # what the OS locks (kept after release, as flock needs)
LOCK_FILES = frozenset({LOCK_NAME, _FLOCK_NAME})
"""Names a lock leaves in a folder; a folder holding only these is empty."""

log = logging.getLogger(__name__)

# Folders this process holds: a second lock from the same process (another thread, or a nested
# command) is refused here, whatever the OS lock does within one process.
_held: set[str] = set()
_held_guard = threading.Lock()


class DirLock:
    """An exclusive lock on a folder for one writing command; use as a context manager.

    Args:
        folder: The data dir or run dir. It is created if missing; when it was created here and
            holds nothing but the lock at release, it is removed again (a failed command leaves
            no empty folder behind).
        command: What holds it, for the message a second writer gets (e.g. "skincls train").
        new: The folder must not exist yet (`FileExistsError` if it does): a fresh run dir name.
        advice: What the refusal tells a second writer to do.
    """

    def __init__(
        self,
        folder: str | Path,
        command: str,
        *,
        new: bool = False,
        advice: str = "wait for it to finish, or use another folder",
    ):
        self.folder = Path(folder)
        self.command = command
        self.new = new
        self.advice = advice
        self.record = self.folder / LOCK_NAME
        self._flock = FileLock(str(self.folder / _FLOCK_NAME), timeout=0, thread_local=False)
        self._key = ""
        self._created: list[Path] = []

    def acquire(self) -> DirLock:
        """Take the lock or raise `LockError` naming the holder's pid and the lock file."""
        # The folders this call creates (the folder and missing parents), removed again if unused.
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=not self.new)
        except FileExistsError:
            if self.new:
                raise
            raise SkinclsError(f"cannot use {self.folder}: it exists and is not a folder") from None
        except OSError as exc:
            raise SkinclsError(
                f"cannot create {self.folder}: {exc.strerror or exc}; choose another folder"
            ) from exc
        self._created = missing
        key = str(self.folder.resolve())
        with _held_guard:
            if key in _held:
                raise LockError(self._busy_message(_read_record(self.record)))
            _held.add(key)
        try:
            self._flock.acquire()
        except Timeout:
            _held.discard(key)
            raise LockError(self._busy_message(_read_record(self.record))) from None
        except OSError as exc:
            _held.discard(key)
            self._remove_if_created()
            raise SkinclsError(
                f"cannot lock {self.folder}: {exc.strerror or exc}; is it writable?"
            ) from exc
        self._key = key
        try:
            old = _read_record(self.record)
            if old is not None:
                log.warning(
                    "took over the stale lock %s of pid %s on %s (%s, since %s): that process "
                    "is gone",
                    self.record,
                    old.get("pid", "?"),
                    old.get("host", "?"),
                    old.get("command", "?"),
                    old.get("since", "?"),
                )
            with atomic_write(self.record, "w") as fh:
                json.dump(_own_record(self.command), fh)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Drop the record and the lock (and the folder, if it was created here and is empty)."""
        if not self._key:
            return
        try:
            self.record.unlink(missing_ok=True)
            self._remove_if_created()
        finally:
            self._flock.release()
            with _held_guard:
                _held.discard(self._key)
            self._key = ""

    def clean_stale_temps(self) -> list[tuple[Path, int]]:
        """Remove every temp file of a killed atomic write in the (held) folder, and say so."""
        return clean_stale_temps(self.folder, locked=True)

    def _remove_if_created(self) -> None:
        # Only folders this lock created and that hold nothing else: never a user's folder.
        if not self._created:
            return
        with contextlib.suppress(OSError):
            if {p.name for p in self.folder.iterdir()} <= LOCK_FILES:
                for name in LOCK_FILES:
                    (self.folder / name).unlink(missing_ok=True)
                for folder in self._created:  # innermost first; a non-empty one stops it
                    folder.rmdir()

    def _busy_message(self, owner: dict | None) -> str:
        if owner is None:
            who = "another process"
        else:
            pid, host = owner.get("pid", "?"), owner.get("host", "?")
            who = f"pid {pid} on {host} ({owner.get('command', '?')}, since {owner.get('since', '?')})"
            if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
                who += " [exited; another process is taking the lock over]"
        return f"{self.folder} is in use by {who}; lock file {self.record}; {self.advice}"

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_dir(folder: str | Path, command: str, **options: Any) -> DirLock:
    """`with lock_dir(run_dir, "skincls train"):` — see `DirLock`."""
    return DirLock(folder, command, **options)


def clean_stale_temps(folder: str | Path, *, locked: bool = False) -> list[tuple[Path, int]]:
    """`atomic.remove_stale_temps`, announced in one line when it removed anything."""
    removed = remove_stale_temps(folder, locked=locked)
    if removed:
        size = sum(n for _, n in removed)
        names = ", ".join(p.name for p, _ in removed[:3]) + (", ..." if len(removed) > 3 else "")
        log.warning(
            "removed %d stale temporary file%s (%s) left in %s by a killed write: %s",
            len(removed),
            "" if len(removed) == 1 else "s",
            _size(size),
            folder,
            names,
        )
    return removed


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _own_record(command: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "argv": sys.argv[1:4],
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _read_record(path: Path) -> dict | None:
    """The owner's record, or None when there is none (or it is unreadable: being written)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file: size, mtime (ns), inode and optionally a SHA-256."""

    size: int
    mtime_ns: int
    inode: int
    sha256: str | None = None

    def differs(self, other: FileStamp) -> list[str]:
        """Names of the fields that differ (the hash only when both have one)."""
        fields = ["size", "mtime_ns", "inode"]
        if self.sha256 is not None and other.sha256 is not None:
            fields.append("sha256")
        return [f for f in fields if getattr(self, f) != getattr(other, f)]


def file_stamp(path: str | Path, *, content: bool = True) -> FileStamp:
    """Stamp `path` now; with `content`, hash its bytes (streamed) too."""
    path = Path(path)
    st = path.stat()
    digest = None
    if content:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return FileStamp(st.st_size, st.st_mtime_ns, st.st_ino, digest)
