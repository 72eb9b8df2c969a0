"""Which series an export takes, read from the spool database (the one place the export reads it).

Plain SQL against the job store's tables (series, instances, jobs, reports) and the drift loop's
own (`feedback` from observability.agreement, `job_drift` from observability.drift_jobs). It opens
the database read-only, so an export never writes to the spool of a running node.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REASONS = ("drift", "disagreement", "failed", "all")


@dataclass
class SelectedSeries:
    """The newest selected job of one series, with what the manifest says about it."""

    series_id: int
    series_uid: str
    study_uid: str
    modality: str
    job_id: int
    job_state: str
    job_created_at: float
    reasons: list[str]
    instance_paths: list[str] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)  # model, version, runtime, positive, probability
    drift: list[dict[str, Any]] = field(default_factory=list)  # model, version, score, drifted
    feedback: list[dict[str, Any]] = field(default_factory=list)  # agree, coded findings (no comment, no time)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def select(db_path: Path, reasons: set[str], since: float | None, until: float | None) -> list[SelectedSeries]:
    """Series whose newest job (created within [since, until]) matches any of `reasons`."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        has_feedback, has_drift = _has_table(db, "feedback"), _has_table(db, "job_drift")
        matched = {
            "failed": "j.state = 'failed'",
            "disagreement": ("EXISTS (SELECT 1 FROM feedback f WHERE f.job_id = j.id AND f.agree = 0"
                             " AND f.id = (SELECT MAX(g.id) FROM feedback g WHERE g.job_id = j.id))")
            if has_feedback else "0",
            "drift": "EXISTS (SELECT 1 FROM job_drift d WHERE d.job_id = j.id AND d.drifted = 1)"
            if has_drift else "0",
            "all": "1",
        }
        columns = ", ".join(f"({matched[r]}) AS reason_{r}" for r in REASONS)
        rows = db.execute(
            f"SELECT j.id, j.series_id, s.series_uid, s.study_uid, s.modality, j.state, j.created_at, {columns}"  # noqa: S608
            " FROM jobs j JOIN series s ON s.id = j.series_id"
            " WHERE j.created_at >= ? AND j.created_at <= ? ORDER BY j.id",
            (since if since is not None else 0.0, until if until is not None else 1e18),
        ).fetchall()
        newest: dict[int, SelectedSeries] = {}
        for job_id, series_id, series_uid, study_uid, modality, state, created, *flags in rows:
            hit = [r for r, f in zip(REASONS, flags, strict=True) if f and r in reasons]
            if not hit:
                continue
            newest[series_id] = SelectedSeries(series_id, series_uid, study_uid, modality, job_id, state, created,
                                               [r for r in hit if r != "all"] or ["all"])
        for sel in newest.values():
            _details(db, sel, has_feedback, has_drift)
        return [newest[k] for k in sorted(newest)]
    finally:
        db.close()


def _details(db: sqlite3.Connection, sel: SelectedSeries, has_feedback: bool, has_drift: bool) -> None:
    sel.instance_paths = [r[0] for r in db.execute(
        "SELECT i.path FROM instances i WHERE i.series_id = ? AND i.path != '' AND i.version ="
        " (SELECT MAX(version) FROM instances k WHERE k.sop_instance_uid = i.sop_instance_uid) ORDER BY i.id",
        (sel.series_id,),
    )]
    sel.reports = [
        {"model": m, "version": v, "runtime": rt, "positive": bool(pos), "probability": round(float(p), 6)}
        for m, v, rt, pos, p in db.execute(
            "SELECT model_name, model_version, runtime, positive, probability FROM reports WHERE job_id = ?"
            " ORDER BY id", (sel.job_id,))
    ]
    if has_drift:
        sel.drift = [
            {"model": m, "version": v, "score": None if s is None else round(float(s), 6), "drifted": bool(d)}
            for m, v, s, d in db.execute(
                "SELECT model_name, model_version, score, drifted FROM job_drift WHERE job_id = ?", (sel.job_id,))
        ]
    if has_feedback:
        sel.feedback = [
            {"agree": bool(a), "findings": _findings(f)}
            for a, f in db.execute("SELECT agree, findings FROM feedback WHERE job_id = ? ORDER BY id", (sel.job_id,))
        ]


def _findings(raw: str) -> list[dict[str, Any]]:
    """Only the coded part of a reader's findings (code, present): free text stays on the appliance."""
    out = []
    for item in json.loads(raw or "[]"):
        code = item.get("code") if isinstance(item, dict) else None
        entry: dict[str, Any] = {"present": bool(item.get("present", True))} if isinstance(item, dict) else {}
        if isinstance(code, dict):
            entry["code"] = {k: str(code[k]) for k in ("value", "scheme", "meaning") if k in code}
        out.append(entry)
    return out
