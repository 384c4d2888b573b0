"""`skincls serve`: defaults, loopback-only Host headers, friendly errors (uvicorn itself not started)."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from skincls.cli import main

from ._support import needs

uvicorn = needs("uvicorn", "skincls serve needs: pip install 'skincls[serve]'")

from starlette.testclient import TestClient  # noqa: E402


@pytest.fixture()
def runs(monkeypatch):
    """Calls of uvicorn.run, recorded instead of serving."""
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    return calls


def test_serve_binds_loopback_by_default(untrained_ckpt_file, runs):
    r = CliRunner().invoke(main, ["serve", str(untrained_ckpt_file), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (call,) = runs
    assert (call["host"], call["port"]) == ("127.0.0.1", 8000)
    assert "http://127.0.0.1:8000" in r.output and "not a medical device" in r.output
    assert "warning" not in r.output
    with TestClient(call["app"]) as c:
        assert c.get("/api/model", headers={"host": "localhost:8000"}).status_code == 200
        assert c.get("/api/model", headers={"host": "rebound.example"}).status_code == 400


def test_serve_options_reach_the_app(untrained_ckpt_file, runs):
    r = CliRunner().invoke(
        main,
        [
            "serve",
            str(untrained_ckpt_file),
            "--host",
            "0.0.0.0",
            "--port",
            "9123",
            "--device",
            "cpu",
            "--uncertain-band",
            "0.2",
            "--max-upload-mb",
            "1.5",
            "--max-files",
            "3",
            "--max-megapixels",
            "2",
            "--no-grad-cam",
        ],
    )
    assert r.exit_code == 0, r.output
    (call,) = runs
    assert (call["host"], call["port"]) == ("0.0.0.0", 9123)
    assert "anyone who can reach this machine" in r.output
    with TestClient(call["app"]) as c:
        info = c.get("/api/model", headers={"host": "192.0.2.7"}).json()  # any Host answered
    assert info["uncertain_band"] == 0.2 and info["grad_cam"] is False
    assert info["limits"] == {
        "max_upload_bytes": round(1.5 * 2**20),
        "max_files": 3,
        "max_pixels": 2_000_000,
    }


def test_serve_missing_checkpoint_is_one_line(tmp_path, runs):
    r = CliRunner().invoke(main, ["serve", str(tmp_path / "nope.pt")])
    assert r.exit_code != 0 and not runs
    assert "does not exist" in r.output and "Traceback" not in r.output


def test_serve_without_the_extra_says_what_to_install(untrained_ckpt_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    r = CliRunner().invoke(main, ["serve", str(untrained_ckpt_file)])
    assert r.exit_code != 0
    assert "pip install 'skincls[serve]'" in r.output and "uvicorn" in r.output


def test_serve_on_a_busy_port_is_one_line_before_the_model_loads(untrained_ckpt_file, runs):
    import socket

    with socket.socket() as other:  # another server holding the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = CliRunner().invoke(
            main, ["serve", str(untrained_ckpt_file), "--port", str(port), "--device", "cpu"]
        )
    assert r.exit_code == 1 and not runs
    assert r.output == (
        f"Error: port {port} on 127.0.0.1 is already in use (another server, or an earlier "
        "skincls serve?): stop it, or give another --port (--port 0 picks a free one)\n"
    )
