"""The job store: one job per generation of one series, and the one table of how a job may change.

A job is received while its series arrives, ready once grouping (completion.py) decides the series is
whole, inferring while a worker runs it, reported when its SRs are durable, delivered when every
destination has them, or failed with a reason. Instances that arrive after a job started inferring
open a new generation, whose SR names the earlier one as its predecessor. Every state change goes
through `JobStore.apply`, which refuses anything `TRANSITIONS` does not list.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_ai.domain import Job, JobState
from edge_ai.spool.db import Database

_SCHEMA = """
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
"""


class JobEvent(enum.StrEnum):
    COMPLETE = "complete"  # grouping decided the series is whole
    MORE = "more"  # an instance arrived for a series that was ready but not yet claimed
    CLAIM = "claim"  # a worker took it
    REPORT = "report"  # its SRs are durable and their deliveries scheduled
    FAIL = "fail"  # it cannot be processed (reason says why)
    RESUME = "resume"  # the node restarted while it was inferring
    DELIVER = "deliver"  # every destination has its SRs
    DEAD_LETTER = "dead_letter"  # a destination gave up
    RETRY = "retry"  # an operator put a failed job back in the queue


S, E = JobState, JobEvent
TRANSITIONS: dict[tuple[JobState, JobEvent], JobState] = {
    (S.RECEIVED, E.COMPLETE): S.READY,
    (S.READY, E.MORE): S.RECEIVED,
    (S.READY, E.CLAIM): S.INFERRING,
    (S.INFERRING, E.REPORT): S.REPORTED,
    (S.INFERRING, E.FAIL): S.FAILED,
    (S.INFERRING, E.RESUME): S.READY,
    (S.REPORTED, E.DELIVER): S.DELIVERED,
    (S.REPORTED, E.DEAD_LETTER): S.FAILED,
    (S.FAILED, E.RETRY): S.READY,
}
OPEN = (S.RECEIVED, S.READY)  # a new instance of the series joins such a job


class InvalidTransition(ValueError):
    """A state change the job life cycle does not allow (a bug or a race the caller must handle)."""


Listener = Callable[[int, str, JobState, str], None]  # job id, series UID, new state, reason


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
    result_json: str = ""  # report/result_json.py, rendered from the same result as the SR (HTTP API)


@dataclass(frozen=True)
class Attached:
    job_id: int
    reopened: bool  # the series already had a result: this opened a new generation


class JobStore:
    def __init__(self, db: Database, listener: Listener | None = None) -> None:
        self.db = db
        self.listener = listener
        db.ensure(_SCHEMA, {"reports": [("result_json", "TEXT")]})  # added for the HTTP API: old rows NULL

    # ---- the one place a job changes state ------------------------------------------------------
    def apply(self, tx: sqlite3.Connection, job_id: int, event: JobEvent, reason: str = "") -> JobState:
        """Move a job by `event` inside the caller's transaction; the listener hears of it after COMMIT.

        Raises:
            InvalidTransition: `TRANSITIONS` has no entry for the job's state and `event`.
        """
        row = tx.execute("SELECT j.state, s.series_uid FROM jobs j JOIN series s ON s.id=j.series_id"
                         " WHERE j.id=?", (job_id,)).fetchone()
        if row is None:
            raise InvalidTransition(f"job {job_id} does not exist")
        current, series_uid = JobState(row[0]), str(row[1])
        new = TRANSITIONS.get((current, event))
        if new is None:
            raise InvalidTransition(f"job {job_id}: {event.value} is not allowed in state {current.value}")
        tx.execute("UPDATE jobs SET state=?, reason=?, updated_at=? WHERE id=?",
                   (new.value, reason, time.time(), job_id))
        if self.listener is not None:
            listener = self.listener
            self.db.after_commit(lambda: listener(job_id, series_uid, new, reason))
        return new

    def state(self, job_id: int) -> JobState | None:
        with self.db.read() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else JobState(row[0])

    # ---- arrival and completion ---------------------------------------------------------------------
    def attach(self, tx: sqlite3.Connection, series_id: int, series_uid: str) -> Attached:
        """A new instance of the series: it joins the open job (a ready one goes back to received) or
        opens the next generation."""
        now = time.time()
        row = tx.execute("SELECT id, state FROM jobs WHERE series_id=? AND state IN (?,?)"
                         " ORDER BY generation DESC LIMIT 1", (series_id, *(s.value for s in OPEN))).fetchone()
        if row is not None:
            job_id = int(row[0])
            tx.execute("UPDATE jobs SET last_instance_at=?, updated_at=? WHERE id=?", (now, now, job_id))
            if row[1] == S.READY:
                self.apply(tx, job_id, E.MORE, "more instances arrived")
            return Attached(job_id, False)
        generation, earlier = tx.execute("SELECT COALESCE(MAX(generation), 0), COUNT(*) FROM jobs WHERE series_id=?",
                                         (series_id,)).fetchone()
        cur = tx.execute("INSERT INTO jobs(series_id, generation, state, created_at, updated_at, last_instance_at)"
                         " VALUES (?,?,?,?,?,?)", (series_id, generation + 1, S.RECEIVED.value, now, now, now))
        job_id = int(cur.lastrowid or 0)
        if self.listener is not None:
            listener = self.listener
            self.db.after_commit(lambda: listener(job_id, series_uid, S.RECEIVED, ""))
        return Attached(job_id, earlier > 0)

    def open_job(self, series_id: int) -> int | None:
        with self.db.read() as db:
            row = db.execute("SELECT id FROM jobs WHERE series_id=? AND state IN (?,?) ORDER BY generation DESC"
                             " LIMIT 1", (series_id, *(s.value for s in OPEN))).fetchone()
        return None if row is None else int(row[0])

    def receiving(self) -> list[tuple[int, float]]:
        """(job id, last instance time) of every job whose series is still arriving."""
        with self.db.read() as db:
            rows = db.execute("SELECT id, last_instance_at FROM jobs WHERE state=?", (S.RECEIVED.value,)).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    def complete(self, jobs: list[tuple[int, float]], reason: str) -> int:
        """Grouping's verdict on (job id, last instance time it saw): these series are whole. A job that
        got another instance since (its time moved) or is no longer received is left alone; returns how
        many became ready."""
        done = 0
        with self.db.tx() as tx:
            for job_id, seen in jobs:
                row = tx.execute("SELECT state, last_instance_at FROM jobs WHERE id=?", (job_id,)).fetchone()
                if row is not None and row[0] == S.RECEIVED and row[1] == seen:
                    self.apply(tx, job_id, E.COMPLETE, reason)
                    done += 1
        return done

    # ---- workers ----------------------------------------------------------------------------------
    def recover(self) -> int:
        """After a restart, jobs caught mid-inference go back to ready; returns how many."""
        with self.db.tx() as tx:
            ids = [r[0] for r in tx.execute("SELECT id FROM jobs WHERE state=?", (S.INFERRING.value,))]
            for job_id in ids:
                self.apply(tx, job_id, E.RESUME, "resumed after restart")
        return len(ids)

    def claim_ready(self) -> Job | None:
        with self.db.tx() as tx:
            row = tx.execute(
                "SELECT j.id, j.series_id, s.series_uid, s.study_uid, s.modality, j.generation FROM jobs j"
                " JOIN series s ON s.id=j.series_id WHERE j.state=? ORDER BY j.updated_at, j.id LIMIT 1",
                (S.READY.value,),
            ).fetchone()
            if row is None:
                return None
            self.apply(tx, row[0], E.CLAIM)
        job_id, series_id, series_uid, study_uid, modality, generation = row
        return Job(job_id, series_id, series_uid, study_uid, modality, generation, JobState.INFERRING)

    def fail(self, job_id: int, reason: str) -> None:
        with self.db.tx() as tx:
            self.apply(tx, job_id, E.FAIL, reason)

    def add_reports(self, tx: sqlite3.Connection, job_id: int, reports: list[ReportRow]) -> list[int]:
        """Record the durable SR files of a job inside the caller's transaction; returns their row ids."""
        now = time.time()
        ids = []
        for r in reports:
            cur = tx.execute(
                "INSERT INTO reports(job_id, model_name, model_version, runtime, sop_instance_uid, series_uid,"
                " path, positive, probability, created_at, result_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, r.model_name, r.model_version, r.runtime, r.sop_instance_uid, r.series_uid, r.path,
                 int(r.positive), r.probability, now, r.result_json or None),
            )
            ids.append(int(cur.lastrowid or 0))
        return ids

    def previous_report(self, series_id: int, model_name: str, before_job: int) -> tuple[str, str] | None:
        """(SOP Instance UID, series UID) of the last SR made for this series and model."""
        with self.db.read() as db:
            row = db.execute(
                "SELECT r.sop_instance_uid, r.series_uid FROM reports r JOIN jobs j ON j.id=r.job_id"
                " WHERE j.series_id=? AND r.model_name=? AND r.job_id<? ORDER BY r.id DESC LIMIT 1",
                (series_id, model_name, before_job),
            ).fetchone()
        return None if row is None else (row[0], row[1])

    # ---- status -------------------------------------------------------------------------------
    def last_instance_at(self, job_id: int) -> float | None:
        """When the job's last instance arrived (wall clock): the start of its time-to-result."""
        with self.db.read() as db:
            row = db.execute("SELECT last_instance_at FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else float(row[0])

    def counts(self) -> dict[str, int]:
        with self.db.read() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = {s.value: 0 for s in JobState}
        counts.update({state: n for state, n in rows})
        return counts

    def recent_reports(self, limit: int = 10) -> list[dict[str, object]]:
        return self.db.rows(
            "SELECT r.created_at, s.series_uid, r.model_name, r.model_version, r.runtime, r.positive,"
            " r.probability, r.sop_instance_uid FROM reports r JOIN jobs j ON j.id=r.job_id"
            " JOIN series s ON s.id=j.series_id ORDER BY r.id DESC LIMIT ?", (limit,))

    def failed_jobs(self) -> list[dict[str, object]]:
        return self.db.rows(
            "SELECT j.id, s.series_uid, j.reason, j.updated_at FROM jobs j JOIN series s ON s.id=j.series_id"
            " WHERE j.state=? ORDER BY j.id", (S.FAILED.value,))
