"""IHE ATNA delivery: the audit log is the durable queue; a background thread sends what it names.

`AuditLog.record` only appends its line (and wakes this thread). The sender reads the log after
its cursor (kept in seals.sqlite3), turns each line the message table (atna) names into a DICOM
audit message in an RFC 5424 frame, and writes it over TLS (RFC 5425, octet counting). While the
repository is unreachable nothing moves and nothing is lost: lines stay in the log; afterwards
they go in log order. Syslog over TLS has no acknowledgement, so a message counts as delivered once
the connection has stayed up `confirm_s` after it was written; anything unconfirmed when the
connection drops is sent again (at least once, in order).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_ai.config import Atna
from edge_ai.observability import atna
from edge_ai.observability import audit_segments as segs
from edge_ai.observability.audit_seals import SealStore

_FACILITY = 10  # security/authorization (PS3.15 A.6, ITI-20)
_MAX_PENDING = 10000  # messages held in memory; beyond, reading pauses (the log keeps them)
_BACKOFF_MAX_S = 30.0


def frame(entry: dict[str, Any], xml: bytes, hostname: str) -> bytes:
    """RFC 5424 message with the XML as MSG (BOM, UTF-8), octet-counted for TLS (RFC 5425 4.3)."""
    pri = _FACILITY * 8 + atna.SEVERITY.get(str(entry.get("event")), 5)
    header = f"<{pri}>1 {entry.get('time', '-')} {hostname[:255] or '-'} edge-ai - IHE+RFC-3881 - "
    msg = header.encode() + b"\xef\xbb\xbf" + xml
    return str(len(msg)).encode() + b" " + msg


def client_context(cfg: Atna) -> ssl.SSLContext:
    """TLS 1.2+ client context; the repository's certificate is checked against ca_certificates."""
    ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_certificates) if cfg.tls.ca_certificates else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls.certificate is not None and cfg.tls.private_key is not None:
        ctx.load_cert_chain(str(cfg.tls.certificate), str(cfg.tls.private_key))
    return ctx


class LogReader:
    """Complete lines after a seq, in order, across segments; remembers where it stopped."""

    def __init__(self, active: Path, after_seq: int) -> None:
        self.active = active
        self.seq = after_seq  # last line read
        self._segment_first = 0
        self._offset = 0

    def read(self, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            seg = self._segment()
            if seg is None:
                break
            got = self._from(seg, limit - len(out), out)
            if not got and (seg.active or not self._advance(seg)):
                break
        return out

    def _segment(self) -> segs.Segment | None:
        want = self.seq + 1
        if self._segment_first:
            for seg in segs.all_segments(self.active):
                if seg.first_seq == self._segment_first:
                    return seg
        self._offset = 0
        present = [s for s in segs.all_segments(self.active) if s.first_seq]
        candidates = [s for s in present if s.first_seq <= want]
        if not candidates:
            if not present:
                return None
            candidates = present[:1]  # lines after the cursor are gone (retention): go on from the oldest
            self.seq = present[0].first_seq - 1
        self._segment_first = candidates[-1].first_seq
        return candidates[-1]

    def _from(self, seg: segs.Segment, limit: int, out: list[dict[str, Any]]) -> int:
        got = 0
        rows = segs.lines(seg.path, self._offset)
        try:
            for offset, raw in rows:
                if not raw.endswith(b"\n"):
                    break
                entry = json.loads(raw)
                self._offset = offset + len(raw)
                if int(entry["seq"]) <= self.seq:
                    continue
                self.seq = int(entry["seq"])
                out.append(entry)
                got += 1
                if got >= limit:
                    break
        finally:
            rows.close()
        return got

    def _advance(self, seg: segs.Segment) -> bool:
        """At the end of a closed segment: move to the next one."""
        later = [s for s in segs.all_segments(self.active) if s.first_seq > seg.first_seq]
        if not later:
            return False
        self._segment_first, self._offset = later[0].first_seq, 0
        return True


class AtnaSender:
    """The background sender. `start()` after the log is open; `stop()` after it is closed."""

    def __init__(self, cfg: Atna, audit_path: Path, store: SealStore, ctx: atna.Context, head: Callable[[], int],
                 log: Any, on_lag: Callable[[int, float | None], None] = lambda n, age: None,
                 confirm_s: float = 0.5) -> None:
        self.cfg, self.store, self.ctx, self.head, self.log, self.on_lag = cfg, store, ctx, head, log, on_lag
        self.confirm_s = confirm_s
        cursor = store.atna_cursor()
        if cursor is None or cursor > head():  # first time with ATNA (or a new log): from now on
            cursor = head()
            store.set_atna_cursor(cursor)
        self.reader = LogReader(audit_path, cursor)
        self._committed = cursor
        self._pending: deque[tuple[int, float, bytes]] = deque()  # (seq, event time, frame)
        self._sent: deque[tuple[int, float, bytes, float]] = deque()  # ... + when written
        self._scanned = cursor  # every line up to here is pending, sent or not mapped
        self._sock: ssl.SSLSocket | None = None
        self._next_try = 0.0
        self._backoff = 1.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._context = client_context(cfg)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="atna-sender", daemon=True)
        self._thread.start()

    def stop(self, budget_s: float = 1.5) -> None:
        """Send what is left while the repository answers, within `budget_s`; the rest waits in the log."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(budget_s + 1)
        self._drain(time.monotonic() + budget_s)
        self._disconnect()

    def lag(self) -> tuple[int, float | None]:
        """(messages waiting, age in seconds of the oldest); lines not read yet count as one each."""
        times = [t for _, t, _, _ in self._sent] + [t for _, t, _ in self._pending]
        unread = max(0, self.head() - self._scanned)
        oldest = min(times, default=None)
        return len(times) + unread, None if oldest is None else max(0.0, time.time() - oldest)

    # ---- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                self.log.exception("atna_sender_error")
                self._disconnect()
                self._next_try = time.monotonic() + self._backoff
            self.on_lag(*self.lag())
            self._wake.wait(0.1 if self._sent or self._pending else 1.0)
            self._wake.clear()

    def _drain(self, deadline: float) -> None:
        if self._sock is None:  # the repository is away: the rest goes at the next start, from the log
            return
        while time.monotonic() < deadline:
            try:
                self._step()
            except Exception:
                self._disconnect()
                return
            if not self._sent and not self._pending and self._scanned >= self.head():
                return
            time.sleep(0.05)

    def _step(self) -> None:
        self._read()
        self._confirm()
        if self._pending and time.monotonic() >= self._next_try:
            self._send()
        if not self._pending and not self._sent and self._scanned > self._committed:
            self._commit(self._scanned)

    def _read(self) -> None:
        if len(self._pending) >= _MAX_PENDING:
            return
        for entry in self.reader.read(_MAX_PENDING - len(self._pending)):
            try:
                xml = atna.message(entry, self.ctx)
            except Exception:  # one odd line must not stop the trail: say so, skip it
                self.log.exception("atna_message_failed", seq=entry.get("seq"), audit_event=entry.get("event"))
                xml = None
            if xml is not None:
                when = epoch(str(entry.get("time", "")))
                self._pending.append((int(entry["seq"]), when, frame(entry, xml, self.ctx.hostname)))
            self._scanned = int(entry["seq"])

    def _send(self) -> None:
        sock = self._connected()
        if sock is None:
            return
        batch = 0
        while self._pending and batch < 200:
            seq, when, data = self._pending[0]
            try:
                sock.sendall(data)
            except (OSError, ssl.SSLError) as exc:
                self._lost(f"send failed: {exc}")
                return
            self._pending.popleft()
            self._sent.append((seq, when, data, time.monotonic()))
            batch += 1

    def _confirm(self) -> None:
        if not self._sent:
            return
        if self._sock is None or not _alive(self._sock):
            self._lost("the repository closed the connection")
            return
        now = time.monotonic()
        done = None
        while self._sent and now - self._sent[0][3] >= self.confirm_s:
            done = self._sent.popleft()[0]
        if done is not None:
            self._commit(done)

    def _commit(self, seq: int) -> None:
        self.store.set_atna_cursor(seq)
        self._committed = seq

    def _lost(self, why: str) -> None:
        """The connection is gone: everything unconfirmed goes back to the front, in order."""
        if self._sent:
            self.log.warning("atna_resend", messages=len(self._sent), reason=why)
        while self._sent:
            seq, when, data, _ = self._sent.pop()
            self._pending.appendleft((seq, when, data))
        self._disconnect()
        self._next_try = time.monotonic() + self._backoff

    def _connected(self) -> ssl.SSLSocket | None:
        if self._sock is not None:
            if _alive(self._sock):
                return self._sock
            self._lost("the repository closed the connection")
            return None
        try:
            raw = socket.create_connection((self.cfg.host, self.cfg.port), timeout=3)
            self._sock = self._context.wrap_socket(raw, server_hostname=self.cfg.host)
            self._sock.settimeout(30)
        except (OSError, ssl.SSLError) as exc:
            self._next_try = time.monotonic() + self._backoff
            if self._backoff == 1.0:
                self.log.warning("atna_unreachable", host=self.cfg.host, port=self.cfg.port, error=str(exc))
            self._backoff = min(_BACKOFF_MAX_S, self._backoff * 2)
            return None
        if self._backoff > 1.0:
            self.log.info("atna_reconnected", host=self.cfg.host, port=self.cfg.port)
        self._backoff = 1.0
        return self._sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _alive(sock: ssl.SSLSocket) -> bool:
    """The repository never writes: a readable socket means it closed (or sent a TLS 1.3 ticket)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    if not readable:
        return True
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(sock.recv(1024))
    except ssl.SSLWantReadError:
        return True
    except (OSError, ssl.SSLError):
        return False
    finally:
        sock.settimeout(timeout)


def epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()
