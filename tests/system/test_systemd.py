"""Under systemd: READY=1, WATCHDOG=1 and STOPPING=1 on the notify socket; SIGTERM exits 0 within 10 s."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import wait_for


class NotifySocket:
    """The datagram socket systemd would own: records every message the node sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, list[str]]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            self.messages.append((time.monotonic(), data.decode().split("\n")))
        return [field for _, fields in self.messages for field in fields]

    def times(self, field: str) -> list[float]:
        self.drain()
        return [t for t, fields in self.messages if field in fields]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.sock.close()


def test_notify_protocol_and_clean_stop(node_factory: Any, notify: NotifySocket) -> None:
    """systemd sees READY=1 (with queue depth), regular WATCHDOG=1, then STOPPING=1; exit 0 within 10 s."""
    node = node_factory()
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}  # ping every 0.2 s
    node.start(env=env)
    assert wait_for(lambda: "READY=1" in notify.drain(), 30), node.log()
    ready = next(fields for _, fields in notify.messages if "READY=1" in fields)
    assert any(f.startswith("STATUS=queue received=0") for f in ready)
    assert any(f == f"MAINPID={node.proc.pid}" for f in ready)
    assert wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 5, 10), notify.messages
    pings = notify.times("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 0.4  # never lets a 0.4 s watchdog lapse
    started = time.monotonic()
    assert node.stop(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert "STOPPING=1" in notify.drain()
    events = node.audit_events()
    assert [e["event"] for e in events if e["event"] != "audit.seal"][-1] == "node.stop"
    assert events[-1]["event"] == "audit.seal" and events[-1]["reason"] == "stop"  # sealed at every stop


def test_no_watchdog_pings_for_another_pid(node_factory: Any, notify: NotifySocket) -> None:
    """A WATCHDOG_PID naming another process (a wrapper's) means the node does not ping."""
    node = node_factory()
    node.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"})
    assert wait_for(lambda: "READY=1" in notify.drain(), 30), node.log()
    time.sleep(1.0)
    assert notify.times("WATCHDOG=1") == []
    assert node.stop() == 0


def test_runs_without_notify_socket(node_factory: Any) -> None:
    """Outside systemd (no NOTIFY_SOCKET) the node serves and stops cleanly, as from a terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    node = node_factory()
    node.start(env=env)
    assert node.stop() == 0
