"""What the HTTP API remembers beside the job store: the model a request asked for (per job) and the
answers given to Idempotency-Key requests. Its own small SQLite file under the spool."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_models (job_id INTEGER PRIMARY KEY, model TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    principal TEXT NOT NULL, key TEXT NOT NULL, body_sha256 TEXT NOT NULL, status INTEGER NOT NULL,
    response TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (principal, key));
"""


class RequestsDB:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def set_model(self, job_id: int, model: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO job_models(job_id, model) VALUES (?,?) ON CONFLICT(job_id)"
                             " DO UPDATE SET model=excluded.model", (job_id, model))

    def model_for(self, job_id: int) -> str | None:
        """The model a request named for this job (POST /v1/predict/{model}, ?model=), or None: routing."""
        with self._lock:
            row = self._db.execute("SELECT model FROM job_models WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def answered(self, principal: str, key: str) -> tuple[str, int, str] | None:
        """(body sha256, status, response JSON) given before for this principal's Idempotency-Key."""
        with self._lock:
            row = self._db.execute("SELECT body_sha256, status, response FROM idempotency WHERE principal=?"
                                   " AND key=?", (principal, key)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), str(row[2]))

    def remember(self, principal: str, key: str, body_sha256: str, status: int, response: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO idempotency VALUES (?,?,?,?,?,?)",
                             (principal, key, body_sha256, status, response, time.time()))
