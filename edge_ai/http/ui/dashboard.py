"""The dashboard's state: sessions, the sampled metrics history, the cached audit chain check, and the
thread that keeps the last two current while the node runs (so the charts have history when IT looks).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edge_ai.http.context import HttpContext
from edge_ai.http.ui import figures, readings
from edge_ai.http.ui.sessions import Sessions

AUDIT_CHECK_S = 60.0  # a fast verify of the live audit log at most this often (never per page refresh)


class Dashboard:
    def __init__(self, ctx: HttpContext, secure_cookie: bool) -> None:
        self.ctx = ctx
        self.secure_cookie = secure_cookie
        self.sessions = Sessions()
        self.history = readings.History()
        self.audit: dict[str, Any] = {"state": "unknown", "text": "not checked yet"}
        self._audit_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ui-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            if time.monotonic() - self._audit_at >= AUDIT_CHECK_S:
                self.check_audit()
            self._stop.wait(readings.FINE_S)

    def sample(self) -> None:
        try:
            self.history.add(readings.read(self.ctx.registry))
        except Exception:  # a closed store during shutdown: the next round tries again
            self.ctx.log.exception("ui_sample_failed")

    def check_audit(self) -> None:
        self._audit_at = time.monotonic()
        if self.ctx.check_audit is None:
            return
        checked = figures.when(time.time())
        try:
            result = self.ctx.check_audit()
        except Exception as exc:
            self.audit = {"state": "bad", "text": f"could not be checked: {type(exc).__name__}", "checked": checked}
            return
        if result.ok:
            text = f"verifies ({result.mode} check: {result.lines} lines re-hashed, {result.seals} seals)"
            self.audit = {"state": "ok", "text": text, "checked": checked}
        else:
            self.audit = {"state": "bad", "text": f"DOES NOT VERIFY: {result.reason}", "checked": checked}
