"""Seal keys and the record of seals kept outside the audit log (SPEC "Audit log": sealed).

A seal is an HMAC-SHA256, keyed by `audit.seal_key_file`, over the chain head (seq and hash of the
line before the seal). Whoever can rewrite the log but not read the key cannot forge one. The newest
seals are also kept here, in their own SQLite file, so a log cut back to an earlier, still valid
prefix is caught: `verify` wants the newest recorded seal to be in the log.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_ai.errors import ConfigError

KEY_FILENAME = "audit-seal.key"
_MIN_KEY_BYTES = 16


def key_path(configured: Path | None, storage_root: Path) -> Path:
    """The configured key file, else <storage.root>/keys/audit-seal.key (kept apart from the log)."""
    return configured if configured is not None else storage_root / "keys" / KEY_FILENAME


def load_key(configured: Path | None, storage_root: Path, create: bool = True) -> bytes:
    """Read the seal key; with no key configured, make one at first start (0600).

    Raises:
        ConfigError: naming `audit.seal_key_file` when the file is missing, unreadable or too short.
    """
    path = key_path(configured, storage_root)
    if configured is None and create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"audit.seal_key_file: cannot read {path}: {exc.strerror}") from exc
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(f"audit.seal_key_file: {path} holds {len(key)} bytes; at least {_MIN_KEY_BYTES} needed")
    return key


def key_id(key: bytes) -> str:
    """A short public name for the key (not its hash: an HMAC of a constant), so seals say which key."""
    return hmac.new(key, b"edge-ai audit key id", hashlib.sha256).hexdigest()[:16]


def seal_mac(key: bytes, sealed_seq: int, sealed_hash: str) -> str:
    return hmac.new(key, f"edge-ai audit seal\n{sealed_seq}\n{sealed_hash}".encode(), hashlib.sha256).hexdigest()


def mac_ok(key: bytes, sealed_seq: int, sealed_hash: str, mac: str) -> bool:
    return hmac.compare_digest(seal_mac(key, sealed_seq, sealed_hash), mac)


@dataclass(frozen=True)
class Seal:
    seq: int  # the seal line's own seq
    hash: str  # the seal line's own hash
    segment_first: int  # first seq of the segment holding it (its file name)
    offset: int  # byte offset of the seal line in that segment, uncompressed


class SealStore:
    """Newest seals and the ATNA cursor, in <storage.root>/audit/seals.sqlite3; safe from any thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seals (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL,"
                         " segment_first INTEGER NOT NULL, offset INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS atna_cursor (id INTEGER PRIMARY KEY CHECK (id = 1),"
                         " seq INTEGER NOT NULL)")

    def add(self, seal: Seal, keep: int = 1000) -> None:
        """Record a seal (after its line is durable in the log, never before); older ones are pruned."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO seals VALUES (?, ?, ?, ?)",
                             (seal.seq, seal.hash, seal.segment_first, seal.offset))
            self._db.execute("DELETE FROM seals WHERE seq < (SELECT seq FROM seals ORDER BY seq DESC"
                             " LIMIT 1 OFFSET ?)", (keep - 1,))
            self._db.execute("COMMIT")

    def newest(self) -> Seal | None:
        with self._lock:
            row = self._db.execute("SELECT seq, hash, segment_first, offset FROM seals"
                                   " ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else Seal(int(row[0]), str(row[1]), int(row[2]), int(row[3]))

    def atna_cursor(self) -> int | None:
        """The seq of the last audit line the ATNA sender is done with (None: never started)."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM atna_cursor WHERE id = 1").fetchone()
        return None if row is None else int(row[0])

    def set_atna_cursor(self, seq: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO atna_cursor VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET seq = ?",
                             (seq, seq))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_readonly(path: Path) -> SealStore | None:
    """The store for `verify` and `status`, or None where the node never ran (no file)."""
    return SealStore(path) if path.exists() else None
