"""The HTTP API's one door into the job store and grouping: every read and change the API makes to jobs
goes through these few functions, so the stores behind them can change without touching the API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge_ai.domain import JobState
from edge_ai.grouping.completion import SERIES, Completion
from edge_ai.service.stores import Stores

# the API's four job states (SPEC "HTTP API") and the store's states behind each
API_STATES: dict[str, tuple[JobState, ...]] = {
    "queued": (JobState.RECEIVED, JobState.READY),
    "running": (JobState.INFERRING,),
    "done": (JobState.REPORTED, JobState.DELIVERED),
    "failed": (JobState.FAILED,),
}
_API_STATE = {s: name for name, states in API_STATES.items() for s in states}

_JOB_SQL = ("SELECT j.id, j.state, j.reason, j.created_at, j.updated_at, s.series_uid, s.study_uid"
            " FROM jobs j JOIN series s ON s.id=j.series_id")


@dataclass(frozen=True)
class JobRow:
    id: int
    state: str  # the API's: queued | running | done | failed
    reason: str
    received_at: float
    updated_at: float
    series_uid: str
    study_uid: str


@dataclass(frozen=True)
class Report:
    id: int
    model_name: str
    model_version: str
    runtime: str
    sr_sop_instance_uid: str
    path: str
    created_at: float
    result: dict[str, Any] | None  # report/result_json.py's rendering; None for rows older than it


def _job(row: dict[str, object]) -> JobRow:
    return JobRow(int(row["id"]), _API_STATE[JobState(str(row["state"]))], str(row["reason"] or ""),  # type: ignore[call-overload]
                  float(row["created_at"]), float(row["updated_at"]), str(row["series_uid"]),  # type: ignore[arg-type]
                  str(row["study_uid"]))


def get_job(stores: Stores, job_id: int) -> JobRow | None:
    rows = stores.db.rows(_JOB_SQL + " WHERE j.id=?", (job_id,))
    return _job(rows[0]) if rows else None


def list_jobs(stores: Stores, state: str | None, since: float | None, limit: int) -> list[JobRow]:
    """Newest first; `state` is one of API_STATES, `since` a Unix time the job was last changed after."""
    where: list[str] = []
    args: list[object] = []
    if state is not None:
        states = API_STATES[state]
        where.append(f"j.state IN ({','.join('?' * len(states))})")
        args.extend(s.value for s in states)
    if since is not None:
        where.append("j.updated_at >= ?")
        args.append(since)
    sql = _JOB_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY j.id DESC LIMIT ?"
    return [_job(r) for r in stores.db.rows(sql, (*args, limit))]


def latest_job_of_series(stores: Stores, series_uid: str) -> int | None:
    """The newest job of a series: what a re-sent (duplicate) instance belongs to."""
    rows = stores.db.rows("SELECT j.id FROM jobs j JOIN series s ON s.id=j.series_id WHERE s.series_uid=?"
                           " ORDER BY j.generation DESC LIMIT 1", (series_uid,))
    return int(rows[0]["id"]) if rows else None  # type: ignore[call-overload]


def reports(stores: Stores, job_id: int) -> list[Report]:
    """The job's results, one per model, oldest first."""
    rows = stores.db.rows(
        "SELECT id, model_name, model_version, runtime, sop_instance_uid, path, created_at, result_json"
        " FROM reports WHERE job_id=? ORDER BY id", (job_id,))
    return [Report(int(r["id"]), str(r["model_name"]), str(r["model_version"]), str(r["runtime"]),  # type: ignore[call-overload]
                   str(r["sop_instance_uid"]), str(r["path"]), float(r["created_at"]),  # type: ignore[arg-type]
                   json.loads(str(r["result_json"])) if r["result_json"] else None) for r in rows]


def sr_path(stores: Stores, job_id: int, model: str | None = None) -> str | None:
    """The SR file of the job's result (for `model`, else its first)."""
    found = [r for r in reports(stores, job_id) if model is None or r.model_name == model]
    return found[0].path if found else None


def retry(stores: Stores, job_id: int) -> bool:
    """A failed job goes back to the queue (its dead letters set aside); False when the job is not failed."""
    return stores.deliveries.retry_job(job_id)


def request_opened(completion: Completion, request_id: str) -> None:
    """A request carrying instances began: grouping treats it as a carrier that sends whole series."""
    completion.opened(request_id, SERIES)


def request_closed(completion: Completion, request_id: str, complete: bool) -> None:
    """The request ended: its series are complete now (`complete`), else they wait for the series timeout."""
    completion.closed(request_id, released=complete)


def destination_activity(stores: Stores) -> dict[str, dict[str, Any]]:
    """Per destination: last delivery, the outcome and error of its newest attempt, pending and dead counts."""
    out: dict[str, dict[str, Any]] = {}
    for r in stores.db.rows(
            "SELECT destination, MAX(CASE WHEN state='delivered' THEN updated_at END) AS last_delivered,"
            " SUM(state='pending') AS pending, SUM(state='dead') AS dead FROM deliveries GROUP BY destination"):
        out[str(r["destination"])] = {**r, "last_state": None, "last_error": "", "last_attempt": None}
    for r in stores.db.rows(
            # SQLite takes the bare columns from the row holding the MAX
            "SELECT destination, state, last_error, MAX(updated_at) AS updated_at FROM deliveries"
            " WHERE attempts > 0 GROUP BY destination"):
        out[str(r["destination"])].update(last_state=r["state"], last_error=r["last_error"],
                                          last_attempt=r["updated_at"])
    return out
