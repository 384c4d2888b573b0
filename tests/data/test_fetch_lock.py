"""Fetch holds its data dir's lock: a second fetch into the same data dir is refused, not mixed in."""

from __future__ import annotations

import os

from click.testing import CliRunner

from skincls.cli import main
from skincls.data.fetch import fetch
from tests.conftest import lock_held_elsewhere, lock_left_by_killed_process


def test_concurrent_fetch_into_one_data_dir_is_refused(tmp_path):
    data = tmp_path / "data"
    fetch(data, synthetic=12, seed=1, val_fraction=0.2)
    before = {p: p.read_bytes() for p in (data / "manifest.csv", data / "dataset.json")}
    with lock_held_elsewhere(data, "skincls fetch") as pid:
        r = CliRunner().invoke(
            main, ["fetch", "--synthetic", "16", "--seed", "2", "--data-dir", str(data)]
        )
        assert r.exit_code != 0 and "Traceback" not in r.output
        [line] = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
        assert f"pid {pid}" in line and str(data / ".skincls.lock") in line
        assert "skincls fetch" in line and "--data-dir" in line
    assert {p: p.read_bytes() for p in before} == before  # the holder's dataset is untouched


def test_fetch_after_a_killed_fetch_takes_the_lock_over_and_cleans_up(tmp_path):
    data = tmp_path / "data"
    dead = lock_left_by_killed_process(data, "skincls fetch")
    stale = data / f".manifest.csv.{dead}.abcdefgh.tmp"  # a write it never finished
    stale.write_text("path,label\n")
    r = CliRunner().invoke(main, ["fetch", "--synthetic", "12", "--data-dir", str(data)])
    assert r.exit_code == 0, r.output
    assert f"took over the stale lock {data / '.skincls.lock'} of pid {dead}" in r.output
    assert "removed 1 stale temporary file" in r.output and not stale.exists()
    assert (data / "manifest.csv").is_file()


def test_refused_fetch_leaves_no_data_dir(tmp_path):
    data = tmp_path / "new" / "data"
    r = CliRunner().invoke(
        main, ["fetch", "--source-dir", str(tmp_path / "missing"), "--data-dir", str(data)]
    )
    assert r.exit_code != 0
    assert os.listdir(tmp_path) == []  # neither the data dir nor its parent was left behind
