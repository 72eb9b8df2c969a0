"""The outbox's store: one delivery per (SR, destination), attempted until done or dead-lettered.

A reported job is delivered once none of its deliveries is pending, or failed if any went to the
dead letters; both changes go through the job store's transition table.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from edge_ai.domain import JobState
from edge_ai.grouping.jobs import JobEvent, JobStore, ReportRow
from edge_ai.spool.db import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY, report_id INTEGER NOT NULL REFERENCES reports(id),
    destination TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL,
    UNIQUE (report_id, destination));
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_at);
"""


@dataclass(frozen=True)
class Delivery:
    id: int
    report_id: int
    job_id: int
    destination: str
    attempts: int
    path: str
    sop_instance_uid: str


class Deliveries:
    def __init__(self, db: Database, jobs: JobStore) -> None:
        self.db = db
        self.jobs = jobs
        db.ensure(_SCHEMA)

    def report(self, job_id: int, reports: list[ReportRow], destinations: list[list[str]]) -> None:
        """A job's SR files are durable: record them and their pending deliveries; the job becomes reported
        (and delivered at once when there is nothing to send)."""
        now = time.time()
        with self.db.tx() as tx:
            ids = self.jobs.add_reports(tx, job_id, reports)
            for report_id, dests in zip(ids, destinations, strict=True):
                for dest in dests:
                    tx.execute("INSERT INTO deliveries(report_id, destination, state, next_at, updated_at)"
                               " VALUES (?,?,'pending',?,?)", (report_id, dest, now, now))
            self.jobs.apply(tx, job_id, JobEvent.REPORT)
            self._settle(tx, job_id)

    def due(self, now: float | None = None, limit: int = 32) -> list[Delivery]:
        with self.db.read() as db:
            rows = db.execute(
                "SELECT d.id, d.report_id, r.job_id, d.destination, d.attempts, r.path, r.sop_instance_uid"
                " FROM deliveries d JOIN reports r ON r.id=d.report_id WHERE d.state='pending' AND d.next_at<=?"
                " ORDER BY d.next_at, d.id LIMIT ?",
                (time.time() if now is None else now, limit),
            ).fetchall()
        return [Delivery(*r) for r in rows]

    def next_at(self) -> float | None:
        with self.db.read() as db:
            row = db.execute("SELECT MIN(next_at) FROM deliveries WHERE state='pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def done(self, delivery: Delivery) -> None:
        self._finish(delivery, "delivered", "")

    def dead(self, delivery: Delivery, reason: str) -> None:
        self._finish(delivery, "dead", reason)

    def retry(self, delivery: Delivery, error: str, next_at: float) -> None:
        with self.db.tx() as tx:
            tx.execute("UPDATE deliveries SET attempts=attempts+1, last_error=?, next_at=?, updated_at=? WHERE id=?",
                       (error, next_at, time.time(), delivery.id))

    def retry_job(self, job_id: int) -> bool:
        """An operator's retry: a failed job goes back to the queue (and is inferred and reported again:
        its SR UIDs are deterministic, so PACS gets no second object); its dead letters are set aside so
        they no longer fail it. False when the job is not failed."""
        with self.db.tx() as tx:
            if self.jobs.state(job_id) is not JobState.FAILED:
                return False
            tx.execute("UPDATE deliveries SET state='retried', updated_at=? WHERE state='dead' AND report_id IN"
                       " (SELECT id FROM reports WHERE job_id=?)", (time.time(), job_id))
            self.jobs.apply(tx, job_id, JobEvent.RETRY, "retry requested")
        return True

    def _finish(self, delivery: Delivery, state: str, error: str) -> None:
        with self.db.tx() as tx:
            tx.execute("UPDATE deliveries SET state=?, attempts=attempts+1, last_error=?, updated_at=? WHERE id=?",
                       (state, error, time.time(), delivery.id))
            self._settle(tx, delivery.job_id)

    def _settle(self, tx: sqlite3.Connection, job_id: int) -> None:
        pending, dead = tx.execute(
            "SELECT SUM(d.state='pending'), SUM(d.state='dead') FROM deliveries d JOIN reports r ON r.id=d.report_id"
            " WHERE r.job_id=?", (job_id,)).fetchone()
        if pending:
            return
        if dead:
            reason = tx.execute(
                "SELECT d.destination || ': ' || d.last_error FROM deliveries d JOIN reports r ON r.id=d.report_id"
                " WHERE r.job_id=? AND d.state='dead' ORDER BY d.id DESC LIMIT 1", (job_id,)).fetchone()[0]
            self.jobs.apply(tx, job_id, JobEvent.DEAD_LETTER, f"dead letter: {reason}")
        else:
            self.jobs.apply(tx, job_id, JobEvent.DELIVER)

    def dead_letters(self) -> list[dict[str, object]]:
        return self.db.rows(
            "SELECT d.updated_at, d.destination, d.attempts, d.last_error AS reason, r.sop_instance_uid,"
            " s.series_uid FROM deliveries d JOIN reports r ON r.id=d.report_id JOIN jobs j ON j.id=r.job_id"
            " JOIN series s ON s.id=j.series_id WHERE d.state='dead' ORDER BY d.id")
