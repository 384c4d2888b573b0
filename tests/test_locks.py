"""Shared base: folder locks (one writer, stale lock taken over), file stamps, stale temp cleanup."""

from __future__ import annotations

import logging
import os

import pytest

from skincls.atomic import atomic_path, atomic_write, is_temp_name, remove_stale_temps
from skincls.errors import LockError
from skincls.locks import LOCK_NAME, DirLock, file_stamp, lock_dir
from tests.conftest import lock_held_elsewhere, lock_left_by_killed_process

DEAD_PID = 2**22 + 12345  # above Linux's default pid_max (4194304): never a running process


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    with lock_held_elsewhere(folder, "skincls train") as pid:
        with pytest.raises(LockError) as err:
            DirLock(folder, "skincls fetch").acquire()
        message = str(err.value)
        assert f"pid {pid}" in message and str(folder / LOCK_NAME) in message
        assert "skincls train" in message and "\n" not in message
    with lock_dir(folder, "skincls fetch"):  # free again once the holder is done
        pass


def test_same_process_cannot_take_a_folder_twice(tmp_path):
    with lock_dir(tmp_path, "first"), pytest.raises(LockError, match=f"pid {os.getpid()}"):
        DirLock(tmp_path, "second").acquire()


def test_stale_lock_of_a_killed_process_is_taken_over_and_said(tmp_path, caplog):
    folder = tmp_path / "data"
    dead = lock_left_by_killed_process(folder, "skincls fetch")
    assert f'"pid": {dead}' in (folder / LOCK_NAME).read_text()  # what a second writer reads
    with caplog.at_level(logging.WARNING, logger="skincls"), lock_dir(folder, "skincls fetch"):
        assert f'"pid": {os.getpid()}' in (folder / LOCK_NAME).read_text()
    [line] = [r.getMessage() for r in caplog.records if "stale lock" in r.getMessage()]
    assert f"pid {dead}" in line and str(folder / LOCK_NAME) in line and "is gone" in line
    assert not (folder / LOCK_NAME).exists()  # released cleanly: no record left to take over


def test_a_folder_made_for_a_lock_is_removed_when_nothing_was_written(tmp_path):
    with lock_dir(tmp_path / "a" / "b", "x"):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a").exists()
    with lock_dir(tmp_path / "c", "x"):
        (tmp_path / "c" / "kept.txt").write_text("x")
    assert (tmp_path / "c" / "kept.txt").is_file()
    with lock_dir(tmp_path, "x"):  # a folder that existed stays, lock file or not
        pass
    assert tmp_path.is_dir()


def test_temp_files_carry_the_writer_pid(tmp_path):
    with atomic_path(tmp_path / "best.pt") as tmp:
        assert is_temp_name(tmp.name) and f".best.pt.{os.getpid()}." in tmp.name
        tmp.write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_only_stale_temps_of_our_own_naming_are_removed(tmp_path):
    live = os.getppid()  # a running process that is not us
    names = {
        "dead": f".last.pt.{DEAD_PID}.abcd_123.tmp",
        "live": f".last.pt.{live}.abcdefgh.tmp",
        "own": f".best.pt.{os.getpid()}.abcdefgh.tmp",
        "old": ".history.json.k2j4h5g6.tmp",  # before the pid was in the name
        "foreign": "notes.tmp",
        "foreign2": ".last.pt.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"0" * 10)
    removed = remove_stale_temps(tmp_path)
    assert [p.name for p, _ in removed] == [names["dead"]]
    assert removed[0][1] == 10
    # Holding the folder's lock, every temp of our naming but this process's own is stale.
    removed = remove_stale_temps(tmp_path, locked=True)
    assert sorted(p.name for p, _ in removed) == sorted([names["live"], names["old"]])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([names["own"], names["foreign"], names["foreign2"]])


def test_file_stamp_sees_an_in_place_change_only_through_the_hash(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 100)
    before = file_stamp(path)
    st = path.stat()
    with path.open("r+b") as fh:  # same size, and the old mtime is put back
        fh.write(b"b")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = file_stamp(path)
    assert before.differs(after) == ["sha256"]
    assert before.differs(file_stamp(path, content=False)) == []  # without a hash: unseen
    with atomic_write(path) as fh:
        fh.write(b"a" * 100)
    assert "inode" in before.differs(file_stamp(path))
