"""Which jobs' inputs were part of a drifted window: the `job_drift` table the export selects from.

The drift monitor scores a rolling window of images, not a job. After each job's inference the
node records the model's window score as it stands with that job's images in it, and, while the
window is at or above the threshold, marks every job that still has an image in the window as
drifted: those are the series a retraining export with `--reason drift` takes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from pathlib import Path

from edge_ai.observability.drift import DriftState

SCHEMA = """
CREATE TABLE IF NOT EXISTS job_drift (
    job_id INTEGER NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, images INTEGER NOT NULL,
    score REAL, drifted INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, PRIMARY KEY (job_id, model_name));
"""


class DriftJobs:
    """Called from the inference worker (one thread); a lock keeps it safe from any other."""

    def __init__(self, db_path: Path) -> None:
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._recent: dict[str, deque[tuple[int, int]]] = {}  # model -> (job, images), newest last

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def observed(self, job_id: int, model: str, version: str, images: int, state: DriftState | None,
                 threshold: float) -> None:
        """One job's images went through the drift monitor of `model`; `state` is its state now."""
        with self._lock:
            recent = self._recent.setdefault(model, deque())
            recent.append((job_id, images))
            window = state.window if state is not None else 0
            covered, keep = 0, deque[tuple[int, int]]()
            for job, n in reversed(recent):  # the jobs whose images are still in the window
                if covered >= window:
                    break
                keep.appendleft((job, n))
                covered += n
            self._recent[model] = keep
            score = None if state is None else state.score
            drifted = score is not None and score >= threshold
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO job_drift(job_id, model_name, model_version, images, score, drifted,"
                    " created_at) VALUES (?,?,?,?,?,?,?)",
                    (job_id, model, version, images, score, int(drifted), time.time()),
                )
                if drifted:
                    self._db.executemany("UPDATE job_drift SET drifted=1 WHERE model_name=? AND job_id=?",
                                         [(model, job) for job, _ in keep])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
