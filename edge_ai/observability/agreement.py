"""Reader feedback and model agreement (SPEC "Feedback"): how often readers agree with each live model.

A verdict (`record_feedback`) is stored with its job in the `feedback` table of the spool database
and audited (`feedback.received`: job, verdict, number of findings, principal; never the comment,
which is free text and may name the patient). Each live model's agreement is the fraction of
"agree" among the latest verdict of each of its last `models[].agreement_window` judged jobs (of
the version now live). It is exported from the first verdict (`edge_ai_model_agreement`); once the
window is full, falling below `models[].min_agreement` audits `model.agreement_low` once per
episode (and a warning), as the drift monitor does for `drift.detected`; the episode ends
(`model.agreement_recovered`) when it is back at or above it.

Verdicts written by another process (`edge-ai feedback`, offline) are left unaudited in the table;
the node records them on its next tick (`process_pending`), so the audit log keeps one writer.

The shadow comparison (`ShadowAgreement`) is the same idea between the live and the shadow version
of a model: the fraction of the last window's series on which both gave the same verdict.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_ai.errors import EdgeAIError

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, agree INTEGER NOT NULL,
    findings TEXT NOT NULL DEFAULT '[]', comment TEXT NOT NULL DEFAULT '', principal TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, audited INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS feedback_job ON feedback(job_id);
CREATE INDEX IF NOT EXISTS feedback_pending ON feedback(audited) WHERE audited = 0;
"""
_COMMENT_MAX = 4000
_FINDINGS_MAX = 64


class FeedbackError(EdgeAIError):
    """Feedback that cannot be stored. `kind`: unknown_job (HTTP 404), no_result (409), invalid (400/422)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Policy:
    """What the config says about one model: models[].agreement_window and min_agreement."""

    version: str
    window: int
    minimum: float


@dataclass(frozen=True)
class AgreementState:
    model: str
    version: str
    value: float | None  # None until the first verdict
    verdicts: int  # in the window (<= window)
    window: int
    minimum: float
    low: bool
    episodes: int


def connect(db_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def store_feedback(
    db: sqlite3.Connection, job_id: int, agree: bool, findings: Sequence[Mapping[str, Any]] | None,
    comment: str | None, principal: str | None,
) -> int:
    """Validate and insert one verdict (not yet audited); returns the feedback id.

    Raises:
        FeedbackError: unknown job, a job without a result yet, or malformed findings/comment.
    """
    if not isinstance(agree, bool):
        raise FeedbackError("invalid", "agree must be true or false")
    findings = list(findings or [])
    if len(findings) > _FINDINGS_MAX or not all(isinstance(f, Mapping) for f in findings):
        raise FeedbackError("invalid", f"findings must be a list of at most {_FINDINGS_MAX} objects")
    comment = comment or ""
    if len(comment) > _COMMENT_MAX:
        raise FeedbackError("invalid", f"comment longer than {_COMMENT_MAX} characters")
    row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
    if row is None:
        raise FeedbackError("unknown_job", f"no job {job_id}")
    if db.execute("SELECT 1 FROM reports WHERE job_id=? LIMIT 1", (job_id,)).fetchone() is None:
        raise FeedbackError("no_result", f"job {job_id} has no result yet (state {row[0]})")
    cur = db.execute(
        "INSERT INTO feedback(job_id, agree, findings, comment, principal, created_at) VALUES (?,?,?,?,?,?)",
        (job_id, int(agree), json.dumps(findings, sort_keys=True), comment, principal or "", time.time()),
    )
    return int(cur.lastrowid or 0)


class Agreement:
    """Thread-safe: the HTTP API records verdicts from its threads, the node's main loop drains others.

    Args:
        db_path: the spool database (jobs and reports live there; `feedback` is added to it).
        policies: live model name -> its version and agreement settings.
        audit: the audit log's record(event, **fields).
        log: a structlog logger.
    """

    def __init__(self, db_path: Path, policies: Mapping[str, Policy], audit: Callable[..., None], log: Any) -> None:
        self._db = connect(db_path)
        self._lock = threading.RLock()
        self.audit = audit
        self.log = log
        self._policies: dict[str, Policy] = {}
        self._states: dict[str, AgreementState] = {}
        self.set_policies(policies)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def set_policies(self, policies: Mapping[str, Policy]) -> None:
        """At start and after a reload: models whose version and settings are unchanged keep their episode."""
        with self._lock:
            old = self._states
            self._policies = dict(policies)
            self._states = {}
            for name, policy in self._policies.items():
                state = self._compute(name, policy)
                prev = old.get(name)
                same = prev is not None and (prev.version, prev.window, prev.minimum) == (
                    policy.version, policy.window, policy.minimum)
                self._states[name] = _with(state, low=prev.low if same and prev else state.low,
                                           episodes=prev.episodes if same and prev else 0)

    def record_feedback(
        self, job_id: int, agree: bool, findings: Sequence[Mapping[str, Any]] | None = None,
        comment: str | None = None, principal: str | None = None,
    ) -> int:
        """Store a reader's verdict on a job, audit it and update the agreement; returns its id.

        This is what POST /v1/jobs/{id}/feedback calls (the body's agree, findings and comment, and
        the request's principal).

        Raises:
            FeedbackError: `kind` unknown_job, no_result or invalid.
        """
        with self._lock:
            feedback_id = store_feedback(self._db, job_id, agree, findings, comment, principal)
            self.process_pending()
        return feedback_id

    def process_pending(self) -> int:
        """Audit verdicts not yet audited (this process's and other processes'), then rescore."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, job_id, agree, findings, principal FROM feedback WHERE audited=0 ORDER BY id"
            ).fetchall()
            if not rows:
                return 0
            for fid, job_id, agree, findings, principal in rows:
                models = self._db.execute(
                    "SELECT DISTINCT model_name, model_version FROM reports WHERE job_id=? ORDER BY model_name",
                    (job_id,),
                ).fetchall()
                self.audit("feedback.received", feedback=fid, job=job_id, agree=bool(agree),
                           findings=len(json.loads(findings or "[]")), principal=principal or None,
                           models=[f"{m} {v}" for m, v in models])
                self._db.execute("UPDATE feedback SET audited=1 WHERE id=?", (fid,))
            self._rescore()
            return len(rows)

    def states(self) -> list[AgreementState]:
        with self._lock:
            return [self._states[n] for n in sorted(self._states)]

    def values(self) -> dict[str, float]:
        return {s.model: s.value for s in self.states() if s.value is not None}

    # ---- internals -----------------------------------------------------------------------------
    def _compute(self, name: str, policy: Policy) -> AgreementState:
        rows = self._db.execute(
            "SELECT f.agree FROM feedback f JOIN reports r ON r.job_id = f.job_id"
            " WHERE r.model_name=? AND r.model_version=? AND f.audited=1"
            " AND f.id = (SELECT MAX(g.id) FROM feedback g WHERE g.job_id = f.job_id AND g.audited=1)"
            " GROUP BY f.id ORDER BY f.id DESC LIMIT ?",
            (name, policy.version, policy.window),
        ).fetchall()
        value = sum(r[0] for r in rows) / len(rows) if rows else None
        low = value is not None and len(rows) >= policy.window and value < policy.minimum
        return AgreementState(name, policy.version, value, len(rows), policy.window, policy.minimum, low, 0)

    def _rescore(self) -> None:
        for name, policy in self._policies.items():
            new = self._compute(name, policy)
            old = self._states.get(name)
            was_low = bool(old and old.low)
            episodes = old.episodes if old else 0
            if new.low and not was_low:
                episodes += 1
                fields = {"model": name, "version": policy.version, "agreement": round(new.value or 0.0, 4),
                          "min_agreement": policy.minimum, "window": policy.window, "verdicts": new.verdicts}
                self.audit("model.agreement_low", **fields)
                self.log.warning("model_agreement_low", **fields)
            elif was_low and not new.low and new.verdicts:
                self.audit("model.agreement_recovered", model=name, version=policy.version,
                           agreement=round(new.value or 0.0, 4), min_agreement=policy.minimum)
                self.log.info("model_agreement_recovered", model=name, agreement=round(new.value or 0.0, 4))
            self._states[name] = _with(new, low=new.low, episodes=episodes)


def _with(state: AgreementState, *, low: bool, episodes: int) -> AgreementState:
    return AgreementState(state.model, state.version, state.value, state.verdicts, state.window, state.minimum,
                          low, episodes)


class ShadowAgreement:
    """Live vs shadow verdicts per model over a rolling window (in memory; restarts begin afresh)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[str, deque[bool]]] = {}

    def configure(self, shadows: Mapping[str, tuple[str, int]]) -> None:
        """model -> (shadow version, window). A new shadow version starts an empty window."""
        with self._lock:
            kept = {}
            for model, (version, window) in shadows.items():
                old = self._windows.get(model)
                if old is not None and old[0] == version and old[1].maxlen == window:
                    kept[model] = old
                else:
                    kept[model] = (version, deque(maxlen=window))
            self._windows = kept

    def observe(self, model: str, agree: bool) -> None:
        with self._lock:
            entry = self._windows.get(model)
            if entry is not None:
                entry[1].append(agree)

    def values(self) -> dict[str, float]:
        with self._lock:
            return {m: sum(w) / len(w) for m, (_, w) in self._windows.items() if w}

    def states(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {m: {"version": v, "agreement": (sum(w) / len(w)) if w else None, "compared": len(w)}
                    for m, (v, w) in self._windows.items()}
