"""sd_notify: systemd-python's daemon.notify where importable, else one datagram to $NOTIFY_SOCKET.

A no-op outside systemd. The datagram fallback keeps a venv without libsystemd working; both paths
send the same fields (READY=1, WATCHDOG=1, STATUS=..., STOPPING=1).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

Sender = Callable[[str], bool]


def _libsystemd_sender() -> Sender | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None

    def send(state: str) -> bool:
        return bool(daemon.notify(state))

    return send


class Notifier:
    """Tells the service manager about readiness, liveness and status.

    Args:
        environ: the environment to read NOTIFY_SOCKET/WATCHDOG_* from (default os.environ).
            An explicit environ always uses the datagram path (systemd-python reads os.environ).
        use_libsystemd: None = systemd-python where importable; False forces the datagram.
    """

    def __init__(self, environ: dict[str, str] | None = None, use_libsystemd: bool | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | None = None
        if addr.startswith("@"):
            self._addr = "\0" + addr[1:]  # abstract namespace
        elif addr.startswith("/"):
            self._addr = addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if watchdog_for_us else None
        self._lib: Sender | None = None
        if use_libsystemd is not False and environ is None and self._addr is not None:
            self._lib = _libsystemd_sender()

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    @property
    def backend(self) -> str:
        """'libsystemd', 'datagram' or 'none' (not under systemd)."""
        if self._addr is None:
            return "none"
        return "libsystemd" if self._lib is not None else "datagram"

    def notify(self, *fields: str) -> bool:
        if self._addr is None:
            return False
        state = "\n".join(fields)
        if self._lib is not None:
            return self._lib(state)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(state.encode(), self._addr)
            except OSError:
                return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        """Keep-alive; only when systemd asked this process for one (WATCHDOG_USEC, WATCHDOG_PID)."""
        if self.watchdog_interval_s is not None:
            self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")
