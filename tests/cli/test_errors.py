"""OS errors, also from DataLoader worker processes, reach the user as one line that says what to do."""

from __future__ import annotations

import errno

import click
import pytest
from click.testing import CliRunner
from torch.utils.data import DataLoader, Dataset

from skincls.cli import main
from skincls.cli._common import friendly_errors
from skincls.errors import DataError
from tests.conftest import TINY_TRAIN


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.output
    return errors[0]


def test_out_inside_a_file_is_one_line(tiny_data):
    r = CliRunner().invoke(
        main, ["train", "--data-dir", str(tiny_data), "--out", "/dev/null/x", *TINY_TRAIN]
    )
    line = _one_line_error(r)
    assert "/dev/null/x" in line and "Not a directory" in line and "choose another" in line


@pytest.mark.parametrize(
    "args",
    [
        ["fetch", "--synthetic", "8", "--data-dir", "/dev/null/x"],
        [
            "evaluate",
            "{ckpt}",
            "--data-dir",
            "{data}",
            "--plots",
            "/dev/null/x",
            "--bootstrap",
            "0",
        ],
        ["predict", "{ckpt}", "{image}", "--csv", "/dev/null/x/p.csv"],
        ["predict", "{ckpt}", "{image}", "--cam", "/dev/null/x"],
    ],
)
def test_impossible_output_paths_are_one_line(ckpt, tiny_data, args):
    image = next((tiny_data / "images" / "test").rglob("*.jpg"))
    fill = {"ckpt": str(ckpt), "data": str(tiny_data), "image": str(image)}
    r = CliRunner().invoke(main, [a.format(**fill) for a in args])
    line = _one_line_error(r)
    assert "/dev/null" in line and ("Not a directory" in line or "not a folder" in line)


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "free some disk space"),
        (PermissionError(errno.EACCES, "Permission denied", "runs/r/best.pt"), "permissions"),
        (FileExistsError(errno.EEXIST, "File exists", "runs/r"), "remove it or choose another"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/x"), "read-only"),
    ],
)
@pytest.mark.slow
def test_os_errors_say_what_to_do(monkeypatch, tiny_data, tmp_path, error, says):
    def fail(*args, **kwargs):
        raise error

    # Training's own writes (history, checkpoints) hit the OS error.
    monkeypatch.setattr("skincls.training.history.History.save", fail)
    r = CliRunner().invoke(
        main, ["train", "--data-dir", str(tiny_data), "--out", str(tmp_path / "r"), *TINY_TRAIN]
    )
    line = _one_line_error(r)
    assert error.strerror in line and says in line


class _Failing(Dataset):
    """Raises `error` when an item is loaded: in a worker process, the way a real dataset fails."""

    def __init__(self, error: Exception):
        self.error = error

    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise self.error


def _load_in_a_worker(error):
    @click.command()
    @friendly_errors
    def cmd():
        batches = iter(DataLoader(_Failing(error), batch_size=2, num_workers=1))
        try:
            for _ in batches:
                pass
        finally:
            # Now: the error's traceback keeps the iterator alive, and shutting its worker down at
            # some later garbage collection blocks that test for ~5 s.
            batches._shutdown_workers()

    return CliRunner().invoke(cmd, [])


def test_os_error_in_a_dataloader_worker_is_unwrapped():
    error = PermissionError(errno.EACCES, "Permission denied", "data/images/train/x.jpg")
    line = _one_line_error(_load_in_a_worker(error))
    assert line == (
        "Error: Permission denied: data/images/train/x.jpg "
        "(check its permissions, or choose another path)"
    )


def test_library_error_in_a_dataloader_worker_is_unwrapped():
    line = _one_line_error(_load_in_a_worker(DataError("cannot read image x.jpg: truncated")))
    assert line == "Error: cannot read image x.jpg: truncated"


def test_a_bug_in_a_worker_keeps_its_traceback():
    r = _load_in_a_worker(ZeroDivisionError("a bug"))
    assert isinstance(r.exception, ZeroDivisionError)
