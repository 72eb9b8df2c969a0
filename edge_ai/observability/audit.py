"""Tamper-evident audit log (SPEC "Audit log"): JSON lines, hash chain, fsync'd, sealed, rotated.

Each line is ``{"seq", "time", "event", ...fields, "prev", "hash"}`` where ``hash`` is the SHA-256
of ``prev`` followed by the canonical JSON (sorted keys, no spaces) of the line without ``hash``.
With a seal key, every `seal_every` lines and at close an ``audit.seal`` line carries an HMAC of the
chain head (audit_seals); the seal is then recorded outside the log too. With `segment_bytes`, the
file rotates into compressed segments (audit_segments), kept `retention_days`; deletions are audited.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_ai.observability import audit_segments as segs
from edge_ai.observability.audit_seals import Seal, SealStore, key_id, seal_mac
from edge_ai.spool.store import fsync_dir

GENESIS = "0" * 64
SEAL_EVENT = "audit.seal"
SEGMENT_EVENT = "audit.segment"
RETENTION_EVENT = "audit.retention"
_RESERVED = frozenset({"seq", "time", "event", "prev", "hash"})  # the chain's own keys
_SEAL_ROOM = 512  # bytes kept free at the end of a segment for its closing seal line
_MAINTENANCE_S = 3600.0


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _line_hash(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + _canonical(body)).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditLog:
    """Append-only, hash-chained, fsync'd; safe to call from any thread.

    With `sync_interval_s` 0 every line is fsync'd before `record` returns. Above 0, lines are
    written to the file (so a killed process loses none) and fsync'd in groups by a background
    thread within that interval: one fsync per group instead of one per line, which on the ingest
    path is the difference between ~8 and ~25 ms per instance. A power cut can then lose at most
    the last interval's lines; the chain stays verifiable (a torn last line is cut on reopen).

    Args:
        key: seal key (None: no seals, as for a bare log in tests).
        seals: where each seal is recorded once its line is durable (SPEC: outside the log).
        on_seal: told (seq, hash) of each seal, for the journal.
        segment_bytes: rotate before a segment would pass this size (0: never).
        retention_days: closed segments whose last line is older are deleted, audited (0: kept).
        on_append: called after each line (outside the lock): wakes the ATNA sender.
    """

    def __init__(self, path: Path, sync_interval_s: float = 0.0, *, key: bytes | None = None,
                 seal_every: int = 100, seals: SealStore | None = None,
                 on_seal: Callable[[int, str], None] | None = None, segment_bytes: int = 0,
                 retention_days: float = 0.0, on_append: Callable[[], None] | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._key, self._seal_every, self._seals, self._on_seal = key, seal_every, seals, on_seal
        self._segment_bytes, self._retention_s = segment_bytes, retention_days * 86400
        self._on_append = on_append
        segs.tidy(path)
        self._fd = -1
        self._seq, self._prev, self._first_seq, self._unsealed, self._size = 0, GENESIS, 0, 0, 0
        self._interval = sync_interval_s
        self._dirty = threading.Event()
        self._closing = False
        self._flusher: threading.Thread | None = None
        self._open_active()
        if sync_interval_s > 0:
            self._flusher = threading.Thread(target=self._flush_loop, name="audit-fsync", daemon=True)
            self._flusher.start()
        self._wake_maintenance = threading.Event()
        self._maintaining = threading.Lock()
        self._maintenance: threading.Thread | None = None
        if segment_bytes or retention_days:
            self._maintenance = threading.Thread(target=self._maintenance_loop, name="audit-rotate", daemon=True)
            self._maintenance.start()
        self._unpublished: deque[Seal] = deque()
        self._seal_wake = threading.Event()
        self._publishing = threading.Lock()
        self._sealer: threading.Thread | None = None
        if self._key is not None:
            self._sealer = threading.Thread(target=self._seal_loop, name="audit-seal", daemon=True)
            self._sealer.start()
            if self._unsealed:
                with self._lock:  # lines left unsealed by a crash are sealed before anything new
                    self._seal("start")

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest line."""
        return self._seq, self._prev

    # ---- writing -------------------------------------------------------------------------------
    def record(self, event: str, **fields: Any) -> None:
        """Append one line.

        Raises:
            ValueError: a field would overwrite one of the chain's own keys (the line would not verify).
            OSError: the line could not be written; nothing of it is left in the file.
        """
        clash = _RESERVED.intersection(fields)
        if clash:
            raise ValueError(f"audit field names reserved for the chain: {sorted(clash)}")
        kept = {k: v for k, v in fields.items() if v is not None}
        with self._lock:
            if self._fd < 0:
                raise OSError(9, "audit log is closed")
            # room for this line, a periodic seal after it and the closing seal of a later rotation
            if self._segment_bytes and self._size and (
                    self._size + len(_canonical(kept)) + 300 + 2 * _SEAL_ROOM > self._segment_bytes):
                self._rotate()
            self._write(event, kept)
            if self._key is not None and self._unsealed >= self._seal_every:
                self._seal("every")
        if self._flusher is not None:
            self._dirty.set()
        if self._on_append is not None:
            self._on_append()

    def _write(self, event: str, fields: dict[str, Any]) -> int:
        """One line at the end of the active segment; returns its byte offset. Lock held."""
        body: dict[str, Any] = {"seq": self._seq + 1, "time": _now(), "event": event, **fields, "prev": self._prev}
        digest = _line_hash(self._prev, body)
        line = _canonical({**body, "hash": digest}) + b"\n"
        size = self._size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            if self._flusher is None:
                os.fsync(self._fd)
        except BaseException:
            # a partial line would break the chain for every later line: cut it off again
            os.ftruncate(self._fd, size)
            raise
        self._seq += 1
        self._prev = digest
        self._size += len(line)
        self._unsealed = 0 if event == SEAL_EVENT else self._unsealed + 1
        if self._first_seq == 0:
            self._first_seq = self._seq
        return size

    def _seal(self, reason: str) -> None:
        """A checkpoint line over the chain head, made durable, then recorded outside the log. Lock held."""
        assert self._key is not None
        sealed_seq, sealed_hash = self._seq, self._prev
        offset = self._write(SEAL_EVENT, {"sealed_seq": sealed_seq, "sealed_hash": sealed_hash,
                                          "key_id": key_id(self._key), "reason": reason,
                                          "hmac": seal_mac(self._key, sealed_seq, sealed_hash)})
        # recorded outside the log by the audit-seal thread, after an fsync: never ahead of the durable
        # log, and the SQLite commit stays off the caller's path (a C-STORE answer)
        self._unpublished.append(Seal(self._seq, self._prev, self._first_seq, offset))
        self._seal_wake.set()

    def _seal_loop(self) -> None:
        while not self._closing:
            self._seal_wake.wait()
            self._seal_wake.clear()
            try:
                self._publish()
            except Exception:  # noqa: S112 (the SQLite file unwritable: tried again at the next seal)
                continue

    def _publish(self) -> None:
        with self._publishing:
            if not self._unpublished:
                return
            fd = self._fd
            if fd >= 0:
                with contextlib.suppress(OSError):  # closed by a rotation, which fsync'd it
                    os.fsync(fd)
            while self._unpublished:
                seal = self._unpublished[0]
                if self._seals is not None:
                    self._seals.add(seal)
                if self._on_seal is not None:
                    self._on_seal(seal.seq, seal.hash)
                self._unpublished.popleft()

    def _rotate(self) -> None:
        """Close the active segment with a seal; the next one starts from its last hash. Lock held."""
        if self._key is not None:
            self._seal("rotate")
        last_time = _now()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        closed = segs.closed_name(self.path, self._first_seq)
        os.rename(self.path, closed)
        fsync_dir(self.path.parent)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        first, self._first_seq, self._size = self._first_seq, 0, 0
        self._write(SEGMENT_EVENT, {"closed": closed.name, "first_seq": first, "last_seq": self._seq,
                                    "last_time": last_time})
        os.fsync(self._fd)
        self._wake_maintenance.set()

    def _open_active(self) -> None:
        """Find the chain head (cutting a torn last line) and open the active segment for appending."""
        seq, prev, first, unsealed = _tail(self.path)
        closed = segs.closed_segments(self.path)
        needs_link = seq == 0 and bool(closed)
        if needs_link:  # a crash between rename and the new segment's first line
            last = segs.last_entry(closed[-1].path) or {}
            seq, prev = int(last.get("seq", 0)), str(last.get("hash", GENESIS))
            unsealed = 0 if last.get("event") == SEAL_EVENT else 1
        self._seq, self._prev, self._first_seq, self._unsealed = seq, prev, first, unsealed
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size
        if needs_link:
            with self._lock:
                self._write(SEGMENT_EVENT, {"closed": closed[-1].name, "first_seq": closed[-1].first_seq,
                                            "last_seq": seq, "last_time": _now()})

    # ---- background: fsync groups, compression, retention --------------------------------------
    def _flush_loop(self) -> None:
        while not self._closing:
            self._dirty.wait()
            time.sleep(self._interval)  # let a group gather
            self._dirty.clear()
            # fsync outside the lock: writers carry on appending while the disk syncs
            fd = self._fd
            if fd >= 0:
                with contextlib.suppress(OSError):  # rotated and closed meanwhile: rotation fsync'd it
                    os.fsync(fd)

    def _maintenance_loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(Exception):  # compression and retention retry at the next round
                self.maintain()
            self._wake_maintenance.wait(_MAINTENANCE_S)
            self._wake_maintenance.clear()

    def maintain(self, now: float | None = None) -> list[str]:
        """Compress closed plain segments, then delete (audited) those past retention; returns deleted names."""
        with self._maintaining:
            return self._maintain(now)

    def _maintain(self, now: float | None) -> list[str]:
        for seg in segs.closed_segments(self.path):
            if seg.path.suffix != ".gz" and not self._closing:
                segs.compress(seg.path)
        if not self._retention_s:
            return []
        deleted: list[str] = []
        closed = segs.closed_segments(self.path)
        now = time.time() if now is None else now
        for seg in closed:
            # the next segment's first line says when this one ended; listed afresh, as the audit lines
            # written here may rotate the active segment meanwhile
            later = [s for s in segs.all_segments(self.path) if s.first_seq > seg.first_seq]
            link = segs.first_entry(later[0].path) or {} if later else {}
            if link.get("event") != SEGMENT_EVENT or not str(link.get("closed")).startswith(
                    seg.name.removesuffix(".gz")):
                break
            ended = datetime.fromisoformat(str(link["last_time"]).replace("Z", "+00:00")).timestamp()
            if now - ended < self._retention_s:
                break
            # audited first: a crash before the unlink deletes (and audits) it again at the next round
            self.record(RETENTION_EVENT, segment=seg.name, first_seq=link["first_seq"], last_seq=link["last_seq"],
                        last_hash=link["prev"], ended=link["last_time"])
            seg.path.unlink(missing_ok=True)
            fsync_dir(self.path.parent)
            deleted.append(seg.name)
        return deleted

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """No line is appended, rotated or compressed while the caller reads the log (a live verify)."""
        with self._maintaining, self._lock:
            yield

    def flush(self) -> None:
        """fsync now (at stop, or before anything that must not run ahead of the audit)."""
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)

    def close(self) -> None:
        """Seal what is unsealed (SPEC: a seal at every stop), fsync and close."""
        self._closing = True
        if self._flusher is not None:
            self._dirty.set()
            self._flusher.join()
        self._wake_maintenance.set()
        if self._maintenance is not None:
            self._maintenance.join(timeout=5)
        with self._lock:
            if self._fd >= 0:
                if self._key is not None and self._unsealed:
                    self._seal("stop")
                os.fsync(self._fd)
                self._publish()
                os.close(self._fd)
                self._fd = -1
        self._seal_wake.set()
        if self._sealer is not None:
            self._sealer.join(timeout=5)


def _tail(path: Path) -> tuple[int, str, int, int]:
    """(seq, hash, first seq, lines after the last seal) of the active segment; a torn final line
    (crash) is cut off."""
    if not path.exists() or path.stat().st_size == 0:
        return 0, GENESIS, 0, 0
    with path.open("rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):  # power loss mid-write: drop the partial line, keep the chain
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)
            data = data[:cut]
            os.fsync(f.fileno())
    if not data:
        return 0, GENESIS, 0, 0
    rows = data.rstrip(b"\n").split(b"\n")
    last = json.loads(rows[-1])
    unsealed = 0
    for raw in reversed(rows):
        if b'"event":"' + SEAL_EVENT.encode() + b'"' in raw:
            break
        unsealed += 1
    return int(last["seq"]), str(last["hash"]), int(json.loads(rows[0])["seq"]), unsealed


def verify(path: Path, key: bytes | None = None, seals: SealStore | None = None, fast: bool = False) -> Any:
    """See audit_verify.verify (kept here for callers of the original single-file verifier)."""
    from edge_ai.observability.audit_verify import verify as _verify

    return _verify(path, key=key, seals=seals, fast=fast)
