"""The spool index and job state machine in one SQLite file (WAL, synchronous=NORMAL).

A job is one generation of one series: received -> ready -> inferring -> reported -> delivered,
or failed with a reason. Instances that arrive after a job started inferring open a new
generation, whose SR names the earlier one as its predecessor.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_ai.domain import InstanceRef, JobState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL REFERENCES series(id),
    sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, path TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 1,
    received_at REAL NOT NULL, UNIQUE (sop_instance_uid, sha256));
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_id);
CREATE INDEX IF NOT EXISTS instances_kept ON instances(series_id) WHERE path != '';
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL REFERENCES series(id),
    generation INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, updated_at REAL NOT NULL, last_instance_at REAL NOT NULL,
    associations INTEGER NOT NULL DEFAULT 1, last_assoc TEXT NOT NULL DEFAULT '',
    UNIQUE (series_id, generation));
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs(id),
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, runtime TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL, series_uid TEXT NOT NULL, path TEXT NOT NULL,
    positive INTEGER NOT NULL, probability REAL NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY, report_id INTEGER NOT NULL REFERENCES reports(id),
    destination TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL,
    UNIQUE (report_id, destination));
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_at);
"""

_OPEN = (JobState.RECEIVED.value, JobState.READY.value)


@dataclass(frozen=True)
class Job:
    id: int
    series_id: int
    series_uid: str
    study_uid: str
    modality: str
    generation: int
    state: JobState


@dataclass(frozen=True)
class Delivery:
    id: int
    report_id: int
    job_id: int
    destination: str
    attempts: int
    path: str
    sop_instance_uid: str


@dataclass(frozen=True)
class StoreOutcome:
    duplicate: bool  # same SOP Instance UID and bytes already stored
    conflict: bool  # same SOP Instance UID, different bytes: kept as a new version
    job_id: int
    reopened: bool  # the series already had a result; this opened a new generation


Listener = Callable[[int, str, JobState, str], None]  # job id, series UID, new state, reason


class Queue:
    """Thread-safe facade over the SQLite file; one connection guarded by a lock."""

    def __init__(self, path: Path, listener: Listener | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: commits are not fsync'd (a checkpoint is). Instance files are fsync'd before
        # Success and Ingest.recover_orphans re-indexes any that a power cut rolled back, so the
        # promise holds at a third of the per-instance fsyncs. Process crashes lose nothing.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._lock = threading.RLock()
        self._listener = listener
        self._pending_events: list[tuple[int, str, JobState, str]] = []

    def _migrate(self) -> None:
        """Columns added after a database was first made: added in place, old rows keep NULL."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(reports)")}
        if "result_json" not in columns:  # the result as JSON, beside the SR rendered from the same result
            self._db.execute("ALTER TABLE reports ADD COLUMN result_json TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                self._pending_events.clear()
                raise
            self._db.execute("COMMIT")
            events, self._pending_events = self._pending_events, []
        if self._listener:
            for event in events:
                self._listener(*event)

    def _set_state(self, db: sqlite3.Connection, job_id: int, state: JobState, reason: str = "") -> None:
        db.execute(
            "UPDATE jobs SET state=?, reason=?, updated_at=? WHERE id=?", (state.value, reason, time.time(), job_id)
        )
        uid = db.execute(
            "SELECT s.series_uid FROM jobs j JOIN series s ON s.id=j.series_id WHERE j.id=?", (job_id,)
        ).fetchone()[0]
        self._pending_events.append((job_id, uid, state, reason))

    # ---- ingest -------------------------------------------------------------------------------
    def has_instance(self, sop_instance_uid: str, sha256: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid=? AND sha256=?", (sop_instance_uid, sha256)
            ).fetchone()
        return row is not None

    def instance_paths(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT path FROM instances")}

    def add_instance(self, ref: InstanceRef, modality: str, assoc: str) -> StoreOutcome:
        """Index a durable file and attach it to the series' open job (creating one if needed)."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO series(study_uid, series_uid, modality, created_at) VALUES (?,?,?,?) "
                "ON CONFLICT(series_uid) DO NOTHING",
                (ref.study_instance_uid, ref.series_instance_uid, modality, now),
            )
            series_id = db.execute("SELECT id FROM series WHERE series_uid=?", (ref.series_instance_uid,)).fetchone()[0]
            if db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid=? AND sha256=?", (ref.sop_instance_uid, ref.sha256)
            ).fetchone():
                job = self._open_job(db, series_id) or 0
                return StoreOutcome(True, False, job, False)
            versions = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM instances WHERE sop_instance_uid=?", (ref.sop_instance_uid,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO instances(series_id, sop_instance_uid, sop_class_uid, path, sha256, size, version,"
                " received_at) VALUES (?,?,?,?,?,?,?,?)",
                (series_id, ref.sop_instance_uid, ref.sop_class_uid, ref.path, ref.sha256, ref.size, versions + 1, now),
            )
            job_id = self._open_job(db, series_id)
            reopened = False
            if job_id is None:
                generation, had_result = db.execute(
                    "SELECT COALESCE(MAX(generation), 0), COUNT(*) FROM jobs WHERE series_id=?", (series_id,)
                ).fetchone()
                reopened = had_result > 0
                cur = db.execute(
                    "INSERT INTO jobs(series_id, generation, state, created_at, updated_at, last_instance_at,"
                    " associations, last_assoc) VALUES (?,?,?,?,?,?,1,?)",
                    (series_id, generation + 1, JobState.RECEIVED.value, now, now, now, assoc),
                )
                job_id = int(cur.lastrowid or 0)
                self._pending_events.append((job_id, ref.series_instance_uid, JobState.RECEIVED, ""))
            else:
                db.execute(
                    "UPDATE jobs SET last_instance_at=?, updated_at=?,"
                    " associations = associations + (last_assoc != ?), last_assoc=? WHERE id=?",
                    (now, now, assoc, assoc, job_id),
                )
                if db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0] == JobState.READY:
                    self._set_state(db, job_id, JobState.RECEIVED, "more instances arrived")
            return StoreOutcome(False, versions > 0, job_id, reopened)

    @staticmethod
    def _open_job(db: sqlite3.Connection, series_id: int) -> int | None:
        row = db.execute(
            "SELECT id FROM jobs WHERE series_id=? AND state IN (?,?) ORDER BY generation DESC LIMIT 1",
            (series_id, *_OPEN),
        ).fetchone()
        return None if row is None else int(row[0])

    # ---- grouping -----------------------------------------------------------------------------
    def association_released(self, assoc: str) -> int:
        """Series carried by one association complete when it is released; returns how many."""
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE state=? AND last_assoc=? AND associations=1",
                    (JobState.RECEIVED.value, assoc),
                )
            ]
            for job_id in ids:
                self._set_state(db, job_id, JobState.READY, "association released")
        return len(ids)

    def ready_after_silence(self, timeout_s: float) -> int:
        """Fallback: series idle for `timeout_s` (several associations, or an aborted one)."""
        limit = time.time() - timeout_s
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE state=? AND last_instance_at<?", (JobState.RECEIVED.value, limit)
                )
            ]
            for job_id in ids:
                self._set_state(db, job_id, JobState.READY, "series timeout")
        return len(ids)

    # ---- worker -------------------------------------------------------------------------------
    def recover(self) -> int:
        """After a restart, jobs caught mid-inference go back to ready; returns how many."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state=?", (JobState.INFERRING.value,))]
            for job_id in ids:
                self._set_state(db, job_id, JobState.READY, "resumed after restart")
        return len(ids)

    def claim_ready(self) -> Job | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT j.id, j.series_id, s.series_uid, s.study_uid, s.modality, j.generation FROM jobs j"
                " JOIN series s ON s.id=j.series_id WHERE j.state=? ORDER BY j.updated_at, j.id LIMIT 1",
                (JobState.READY.value,),
            ).fetchone()
            if row is None:
                return None
            self._set_state(db, row[0], JobState.INFERRING)
        job_id, series_id, series_uid, study_uid, modality, generation = row
        return Job(job_id, series_id, series_uid, study_uid, modality, generation, JobState.INFERRING)

    def series_instances(self, series_id: int) -> list[InstanceRef]:
        """The latest version of every instance of the series still in the spool, in arrival order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.sop_class_uid, i.sop_instance_uid, s.series_uid, s.study_uid, i.path, i.sha256, i.size"
                " FROM instances i JOIN series s ON s.id=i.series_id WHERE i.series_id=? AND i.path != ''"
                " AND i.version ="
                " (SELECT MAX(version) FROM instances j WHERE j.sop_instance_uid=i.sop_instance_uid)"
                " ORDER BY i.id",
                (series_id,),
            ).fetchall()
        return [InstanceRef(*r) for r in rows]

    def previous_report(self, series_id: int, model_name: str, before_job: int) -> tuple[str, str] | None:
        """(SOP Instance UID, series UID) of the last SR made for this series and model."""
        with self._lock:
            row = self._db.execute(
                "SELECT r.sop_instance_uid, r.series_uid FROM reports r JOIN jobs j ON j.id=r.job_id"
                " WHERE j.series_id=? AND r.model_name=? AND r.job_id<? ORDER BY r.id DESC LIMIT 1",
                (series_id, model_name, before_job),
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def add_reports(self, job_id: int, reports: list[ReportRow], destinations: list[list[str]]) -> None:
        """Record the durable SR files and their pending deliveries; the job becomes reported."""
        now = time.time()
        with self._tx() as db:
            for report, dests in zip(reports, destinations, strict=True):
                cur = db.execute(
                    "INSERT INTO reports(job_id, model_name, model_version, runtime, sop_instance_uid, series_uid,"
                    " path, positive, probability, created_at, result_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (job_id, report.model_name, report.model_version, report.runtime, report.sop_instance_uid,
                     report.series_uid, report.path, int(report.positive), report.probability, now,
                     report.result_json or None),
                )
                for dest in dests:
                    db.execute(
                        "INSERT INTO deliveries(report_id, destination, state, next_at, updated_at)"
                        " VALUES (?,?,'pending',?,?)",
                        (cur.lastrowid, dest, now, now),
                    )
            self._set_state(db, job_id, JobState.REPORTED)
            self._settle(db, job_id)

    def fail_job(self, job_id: int, reason: str) -> None:
        with self._tx() as db:
            self._set_state(db, job_id, JobState.FAILED, reason)

    # ---- outbox -------------------------------------------------------------------------------
    def due_deliveries(self, now: float | None = None, limit: int = 32) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(
                "SELECT d.id, d.report_id, r.job_id, d.destination, d.attempts, r.path, r.sop_instance_uid"
                " FROM deliveries d JOIN reports r ON r.id=d.report_id WHERE d.state='pending' AND d.next_at<=?"
                " ORDER BY d.next_at, d.id LIMIT ?",
                (time.time() if now is None else now, limit),
            ).fetchall()
        return [Delivery(*r) for r in rows]

    def next_delivery_at(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_at) FROM deliveries WHERE state='pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def delivery_done(self, delivery: Delivery) -> None:
        self._finish_delivery(delivery, "delivered", "")

    def delivery_dead(self, delivery: Delivery, reason: str) -> None:
        self._finish_delivery(delivery, "dead", reason)

    def delivery_retry(self, delivery: Delivery, error: str, next_at: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET attempts=attempts+1, last_error=?, next_at=?, updated_at=? WHERE id=?",
                (error, next_at, time.time(), delivery.id),
            )

    def _finish_delivery(self, delivery: Delivery, state: str, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state=?, attempts=attempts+1, last_error=?, updated_at=? WHERE id=?",
                (state, error, time.time(), delivery.id),
            )
            self._settle(db, delivery.job_id)

    def _settle(self, db: sqlite3.Connection, job_id: int) -> None:
        """A reported job is delivered once nothing is pending; failed if anything went to dead letter."""
        pending, dead = db.execute(
            "SELECT SUM(d.state='pending'), SUM(d.state='dead') FROM deliveries d JOIN reports r ON r.id=d.report_id"
            " WHERE r.job_id=?",
            (job_id,),
        ).fetchone()
        if pending:
            return
        if dead:
            reason = db.execute(
                "SELECT d.destination || ': ' || d.last_error FROM deliveries d JOIN reports r ON r.id=d.report_id"
                " WHERE r.job_id=? AND d.state='dead' LIMIT 1",
                (job_id,),
            ).fetchone()[0]
            self._set_state(db, job_id, JobState.FAILED, f"dead letter: {reason}")
        else:
            self._set_state(db, job_id, JobState.DELIVERED)

    # ---- retention ----------------------------------------------------------------------------
    def purgeable_series(self, before: float, limit: int = 100) -> list[tuple[int, str]]:
        """(id, UID) of series whose every job is delivered, last changed before `before`, with files kept."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.series_uid FROM series s"
                " WHERE EXISTS (SELECT 1 FROM instances i WHERE i.series_id=s.id AND i.path != '')"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_id=s.id AND j.state != ?)"
                " AND (SELECT MAX(j.updated_at) FROM jobs j WHERE j.series_id=s.id) < ? LIMIT ?",
                (JobState.DELIVERED.value, before, limit),
            ).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def purge_series(self, series_id: int, before: float) -> list[tuple[str, int]]:
        """Mark a series' kept files purged, durably, if it is still purgeable; returns (path, size) to delete.

        Checked again and marked in one transaction under the lock that `add_instance` takes, so an
        instance arriving meanwhile either lands before (the series is no longer purgeable) or after
        (its file is not in the list). Committed with a full fsync before any file is deleted: after a
        power cut no row points at a deleted file.
        """
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                with self._tx() as db:
                    still = db.execute(
                        "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE series_id=? AND state != ?)"
                        " AND (SELECT MAX(updated_at) FROM jobs WHERE series_id=?) < ?",
                        (series_id, JobState.DELIVERED.value, series_id, before),
                    ).fetchone()[0]
                    if not still:
                        return []
                    files = db.execute(
                        "SELECT path, size FROM instances WHERE series_id=? AND path != ''", (series_id,)
                    ).fetchall()
                    db.execute("UPDATE instances SET path='' WHERE series_id=? AND path != ''", (series_id,))
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")
        return [(str(p), int(n)) for p, n in files]

    def is_purged(self, sop_instance_uid: str, sha256: str) -> bool:
        """This content was stored once and its file deleted by retention."""
        with self._lock:
            row = self._db.execute("SELECT path FROM instances WHERE sop_instance_uid=? AND sha256=?",
                                   (sop_instance_uid, sha256)).fetchone()
        return row is not None and row[0] == ""

    def series_was_purged(self, series_id: int) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM instances WHERE series_id=? AND path='' LIMIT 1",
                                    (series_id,)).fetchone() is not None

    # ---- status -------------------------------------------------------------------------------
    def last_instance_at(self, job_id: int) -> float | None:
        """When the job's last instance arrived (wall clock): the start of its time-to-result."""
        with self._lock:
            row = self._db.execute("SELECT last_instance_at FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else float(row[0])

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = {s.value: 0 for s in JobState}
        counts.update({state: n for state, n in rows})
        return counts

    def recent_reports(self, limit: int = 10) -> list[dict[str, object]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT r.created_at, s.series_uid, r.model_name, r.model_version, r.runtime, r.positive,"
                " r.probability, r.sop_instance_uid FROM reports r JOIN jobs j ON j.id=r.job_id"
                " JOIN series s ON s.id=j.series_id ORDER BY r.id DESC LIMIT ?",
                (limit,),
            )
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def dead_letters(self) -> list[dict[str, object]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT d.updated_at, d.destination, d.attempts, d.last_error AS reason, r.sop_instance_uid,"
                " s.series_uid FROM deliveries d JOIN reports r ON r.id=d.report_id JOIN jobs j ON j.id=r.job_id"
                " JOIN series s ON s.id=j.series_id WHERE d.state='dead' ORDER BY d.id",
            )
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def failed_jobs(self) -> list[dict[str, object]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT j.id, s.series_uid, j.reason, j.updated_at FROM jobs j JOIN series s ON s.id=j.series_id"
                " WHERE j.state=? ORDER BY j.id",
                (JobState.FAILED.value,),
            )
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # ---- HTTP API (used only through edge_ai/http/jobs_view.py) ------------------------------------
    def http_rows(self, sql: str, args: tuple[object, ...]) -> list[dict[str, object]]:
        """Read-only rows for the HTTP job view, as dicts."""
        with self._lock:
            cur = self._db.execute(sql, args)
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def retry_failed(self, job_id: int, reason: str) -> bool:
        """A failed job goes back to ready (its series is re-analysed); False when it is not failed."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row[0] != JobState.FAILED.value:
                return False
            revived = db.execute(
                "UPDATE deliveries SET state='pending', attempts=0, next_at=?, updated_at=? WHERE state='dead'"
                " AND report_id IN (SELECT id FROM reports WHERE job_id=?)", (time.time(), time.time(), job_id),
            ).rowcount
            # dead letters are sent again; a job that failed before its SR is analysed again
            self._set_state(db, job_id, JobState.REPORTED if revived else JobState.READY, reason)
        return True


@dataclass(frozen=True)
class ReportRow:
    model_name: str
    model_version: str
    runtime: str
    sop_instance_uid: str
    series_uid: str
    path: str
    positive: bool
    probability: float
    result_json: str = ""  # report/result_json.py, rendered from the same result as the SR
