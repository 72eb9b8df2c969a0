"""sd_notify: what systemd receives on the notify socket, with and without systemd-python."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_ai.service.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    yield sock
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_datagram_fallback_sends_ready_status_and_mainpid(notify_socket: socket.socket) -> None:
    """Without libsystemd the node still tells systemd READY=1, its status and main PID."""
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert notifier.backend == "datagram"
    notifier.ready("queue received=0")
    assert _received(notify_socket) == ["READY=1", "STATUS=queue received=0", f"MAINPID={os.getpid()}"]


def test_stopping_and_watchdog_fields(notify_socket: socket.socket) -> None:
    """STOPPING=1 and WATCHDOG=1 arrive as systemd expects them."""
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "1000000"})
    notifier.watchdog()
    assert _received(notify_socket) == ["WATCHDOG=1"]
    notifier.stopping()
    assert _received(notify_socket)[0] == "STOPPING=1"


def test_abstract_namespace_socket() -> None:
    """A NOTIFY_SOCKET in the abstract namespace (@name) is reached too."""
    name = f"edge-ai-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(100) == b"STATUS=hello"


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """WATCHDOG_USEC=30 s means a ping every 15 s; another process's watchdog is not ours."""
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15.0
    other = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval_s is None
    assert Notifier({}).watchdog_interval_s is None


def test_outside_systemd_is_a_no_op() -> None:
    """With no NOTIFY_SOCKET nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled and notifier.backend == "none"
    assert notifier.notify("READY=1") is False


def test_unreachable_socket_does_not_raise(tmp_path: Path) -> None:
    """A stale NOTIFY_SOCKET path never takes the node down."""
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).notify("READY=1") is False


def test_libsystemd_backend_when_importable(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where systemd-python is installed it is used, and systemd receives the same fields."""
    pytest.importorskip("systemd.daemon")
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    notifier = Notifier()
    assert notifier.backend == "libsystemd"
    notifier.ready("up")
    fields = _received(notify_socket)
    assert "READY=1" in fields and "STATUS=up" in fields
