"""The test suite's network guard: internet sockets are blocked, local IPC (Unix sockets) is not."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import NetworkBlocked


def test_internet_sockets_are_blocked_and_unix_sockets_are_not(tmp_path):
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("127.0.0.1", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkBlocked):
        s.connect(("127.0.0.1", 9))
    path = str(tmp_path / "ipc.sock")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen(1)
        client.connect(path)  # DataLoader workers talk to the main process this way
