"""The HTTP API (SPEC "HTTP API"): health, jobs, predict, metrics, OpenAPI; STOW-RS in dicomweb.py.

Blocking work (spool writes, fsync, SQLite) runs in worker threads; the event loop only moves bytes.
Every answer that is not a success is application/problem+json; every request is audited (middleware.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, Response

from edge_ai import __version__
from edge_ai.errors import EdgeAIError
from edge_ai.http import dicomweb, intake, jobs_view
from edge_ai.http.auth import AuthFailed, Principal
from edge_ai.http.context import HttpContext
from edge_ai.http.middleware import RequestAudit
from edge_ai.http.problems import Problem, refusal_problem

MAX_WAIT_S = 30
_FEEDBACK_STATUS = {"unknown_job": 404, "no_result": 409, "invalid": 422}


class Verdict(BaseModel):
    """POST /v1/jobs/{id}/feedback: does the reader agree with the result, and what did they see."""

    agree: bool
    findings: list[dict[str, Any]] = []
    comment: str | None = Field(default=None, max_length=4000)
_BINARY = {"schema": {"type": "string", "format": "binary"}}
DICOM_BODY = {"requestBody": {"required": True, "content": {
    "application/dicom": _BINARY, 'multipart/related; type="application/dicom"': _BINARY}}}
_WAIT_RE = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d+)", re.I)
_FINAL = ("done", "failed")


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def require(ctx: HttpContext, scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller's principal, which must hold `scope` (401 / 403 / 429 otherwise)."""

    async def dependency(request: Request) -> Principal:
        peer = request.client.host if request.client else ""
        wait = ctx.throttle.retry_after(peer)
        if wait > 0:
            raise Problem(429, "too many failed authentications from this address; try again later",
                          headers={"Retry-After": str(int(wait) + 1)})
        try:
            principal = await to_thread.run_sync(ctx.auth.authenticate, request.headers.get("authorization"))
        except AuthFailed as exc:
            failures = ctx.throttle.failed(peer)
            ctx.audit("auth.failed", peer=peer, method=request.method, path=request.url.path, reason=str(exc),
                      failures_in_window=failures)
            raise Problem(401, "missing or invalid credentials: send Authorization: Bearer <API key or access "
                          "token>", headers={"WWW-Authenticate": 'Bearer realm="edge-ai"'}) from exc
        request.scope.setdefault("state", {})["principal"] = principal
        if scope not in principal.scopes:
            raise Problem(403, f"this endpoint needs the {scope!r} scope",
                          headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'})
        return principal

    return dependency


def job_json(ctx: HttpContext, row: jobs_view.JobRow, model: str | None = None) -> dict[str, Any]:
    """The SPEC's job object; its result part is the stored rendering of the result the SR was built from."""
    results = jobs_view.reports(ctx.stores, row.id)
    chosen = next((r for r in results if model is None or r.model_name == model), None)
    result = chosen.result if chosen and chosen.result else {}
    error = None
    if row.state == "failed":
        error = {"type": "urn:edge-ai:problem:job-failed", "title": "Job failed", "detail": row.reason}
    return {
        "job_id": str(row.id),
        "state": row.state,
        "prediction_id": str(chosen.id) if chosen else None,
        "study_instance_uid": row.study_uid,
        "series_instance_uid": row.series_uid,
        "model": result.get("model") or ({"name": chosen.model_name, "version": chosen.model_version,
                                          "sha256": None, "runtime": chosen.runtime} if chosen else None),
        "findings": result.get("findings", []),
        "sr_sop_instance_uid": chosen.sr_sop_instance_uid if chosen else None,
        "error": error,
        "received_at": _iso(row.received_at),
        "finished_at": _iso(chosen.created_at if chosen else row.updated_at) if row.state in _FINAL else None,
        "href": f"/v1/jobs/{row.id}",
    }


def _wait_seconds(prefer: str | None) -> int:
    match = _WAIT_RE.search(prefer or "")
    return min(MAX_WAIT_S, int(match.group(1))) if match else 0


async def _wait_for(ctx: HttpContext, job_id: int, seconds: float) -> jobs_view.JobRow | None:
    """The job once done or failed, or None when `seconds` pass first."""
    deadline = time.monotonic() + seconds
    event = asyncio.Event()
    ctx.watch.add(job_id, event)
    try:
        while True:
            row = await to_thread.run_sync(jobs_view.get_job, ctx.stores, job_id)
            if row is not None and row.state in _FINAL:
                return row
            left = deadline - time.monotonic()
            if left <= 0 or ctx.stopping.is_set():
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, 1.0))
            event.clear()
    finally:
        ctx.watch.remove(job_id, event)


def _jobs_answer(ctx: HttpContext, got: intake.Intake) -> tuple[int, dict[str, Any], dict[str, str]]:
    if not got.stored:
        first = got.failed[0].refusal if got.failed else None
        problem = refusal_problem(first.kind, first.reason) if first else Problem(400, "no instance in the body")
        body = problem.body()
        if len(got.failed) > 1:
            body["failures"] = [{"index": o.index, "detail": o.refusal.reason} for o in got.failed if o.refusal]
        return problem.status, body, {}
    jobs = []
    for job_id in got.job_ids:
        row = jobs_view.get_job(ctx.stores, job_id)
        jobs.append({"job_id": str(job_id), "state": row.state if row else "queued", "href": f"/v1/jobs/{job_id}"})
    answer: dict[str, Any] = {"jobs": jobs}
    if got.failed:
        answer["failed"] = [{"index": o.index, "sop_instance_uid": o.sop_instance_uid or None,
                             "problem": refusal_problem(o.refusal.kind, o.refusal.reason).body()}
                            for o in got.failed if o.refusal]
    return 202, answer, {"Location": jobs[0]["href"]} if jobs else {}


async def submit(request: Request, ctx: HttpContext, principal: Principal, model: str | None) -> Response:
    """POST /v1/jobs and /v1/predict/{model}: store, answer 202 with the jobs (replayed for a repeated key)."""
    if model is not None and model not in ctx.models():
        raise Problem(404, f"no model named {model!r} is being served", kind="unknown-model")
    key = request.headers.get("idempotency-key")
    if key is not None:
        if not 1 <= len(key) <= 255:
            raise Problem(400, "Idempotency-Key must be 1 to 255 characters")
        before = await to_thread.run_sync(ctx.requests.answered, principal.name, key)
        if before is not None:
            digest = await intake.hash_only(request, ctx.cfg.max_request_bytes)
            if digest != before[0]:
                raise Problem(422, "this Idempotency-Key was used before with a different body",
                              kind="idempotency-key-reused")
            status, answer = before[1], json.loads(before[2])
            return _json(status, answer, {"Location": answer["jobs"][0]["href"]} if answer.get("jobs") else {})
    got = await intake.receive(request, ctx, principal, model=model)
    status, answer, headers = await to_thread.run_sync(_jobs_answer, ctx, got)
    if key is not None and status == 202:
        await to_thread.run_sync(ctx.requests.remember, principal.name, key, got.body_sha256, status,
                                 json.dumps(answer))
    return _json(status, answer, headers)


def _json(status: int, body: dict[str, Any], headers: dict[str, str]) -> JSONResponse:
    media = "application/problem+json" if status >= 400 else "application/json"
    return JSONResponse(body, status_code=status, headers=headers, media_type=media)


def _job_id(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise Problem(404, f"no job {text[:40]!r}", kind="unknown-job")
    return int(text)


async def _get_job(ctx: HttpContext, job_id: str) -> jobs_view.JobRow:
    row = await to_thread.run_sync(jobs_view.get_job, ctx.stores, _job_id(job_id))
    if row is None:
        raise Problem(404, f"no job {job_id}", kind="unknown-job")
    return row


def create_app(ctx: HttpContext, dashboard: Any = None) -> Any:
    """The ASGI application: FastAPI routes (and the dashboard's, when given) behind the audit/stopping
    middleware."""
    app = FastAPI(title="edge_ai", version=__version__, openapi_url="/v1/openapi.json", docs_url=None,
                  redoc_url=None, description="Jobs, predictions and DICOMweb STOW-RS of the edge_ai node.")
    _exception_handlers(app, ctx)
    _service_routes(app, ctx)
    submit_scope = Depends(require(ctx, "submit"))
    _submit_routes(app, ctx, submit_scope)
    _job_routes(app, ctx)
    _feedback_route(app, ctx)
    dicomweb.add_routes(app, ctx, submit_scope)
    if dashboard is not None:
        from edge_ai.http.ui.routes import add_routes

        add_routes(app, dashboard)
    return RequestAudit(app, ctx)


def _service_routes(app: FastAPI, ctx: HttpContext) -> None:
    """Probes and metrics: no credentials."""

    @app.get("/v1/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/v1/health/ready")
    async def ready() -> JSONResponse:
        reasons = (["stopping"] if ctx.stopping.is_set() else []) + ctx.not_ready()
        if reasons:
            return _json(503, Problem(503, "; ".join(reasons), reasons=reasons).body(), {"Retry-After": "5"})
        return JSONResponse({"status": "ready", "models": ctx.models()})

    @app.get("/metrics")
    async def metrics() -> Response:
        data = await to_thread.run_sync(generate_latest, ctx.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)


def _submit_routes(app: FastAPI, ctx: HttpContext, submit_scope: Any) -> None:
    @app.post("/v1/jobs", status_code=202, openapi_extra=DICOM_BODY)
    async def post_jobs(request: Request, principal: Principal = submit_scope,
                        model: str | None = None) -> Response:
        return await submit(request, ctx, principal, model)

    @app.post("/v1/predict/{model}", status_code=202, openapi_extra=DICOM_BODY)
    async def predict(request: Request, model: str, principal: Principal = submit_scope) -> Response:
        response = await submit(request, ctx, principal, model)
        wait = _wait_seconds(request.headers.get("prefer"))
        if response.status_code != 202 or not wait:
            return response
        first = json.loads(bytes(response.body))["jobs"][0]["job_id"]
        row = await _wait_for(ctx, int(first), wait)
        if row is None:
            return response
        body = await to_thread.run_sync(job_json, ctx, row, model)
        return JSONResponse(body, headers={"Preference-Applied": f"wait={wait}", "Location": body["href"]})


def _job_routes(app: FastAPI, ctx: HttpContext) -> None:
    read_scope = Depends(require(ctx, "read"))
    admin_scope = Depends(require(ctx, "admin"))

    @app.get("/v1/jobs")
    async def list_jobs(_: Principal = read_scope, state: str | None = None, since: str | None = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        if state is not None and state not in jobs_view.API_STATES:
            raise Problem(400, f"state must be one of {', '.join(jobs_view.API_STATES)}")
        rows = await to_thread.run_sync(jobs_view.list_jobs, ctx.stores, state, _since(since), limit)
        return {"jobs": [await to_thread.run_sync(job_json, ctx, r) for r in rows]}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, _: Principal = read_scope) -> dict[str, Any]:
        row = await _get_job(ctx, job_id)
        return await to_thread.run_sync(job_json, ctx, row)

    @app.get("/v1/jobs/{job_id}/sr", response_class=FileResponse)
    async def get_sr(job_id: str, _: Principal = read_scope, model: str | None = None) -> Response:
        row = await _get_job(ctx, job_id)
        path = await to_thread.run_sync(jobs_view.sr_path, ctx.stores, row.id, model)
        if path is None:
            raise Problem(404, f"job {job_id} has no SR yet (state {row.state})", kind="no-sr-yet")
        return FileResponse(path, media_type="application/dicom")

    @app.post("/v1/jobs/{job_id}/retry", status_code=202)
    async def retry(job_id: str, _: Principal = admin_scope) -> JSONResponse:
        row = await _get_job(ctx, job_id)
        done = await to_thread.run_sync(jobs_view.retry, ctx.stores, row.id)
        if not done:
            raise Problem(409, f"job {job_id} is {row.state}, not failed: only a failed job can be retried")
        ctx.wake_worker()
        return JSONResponse({"job_id": str(row.id), "state": "queued", "href": f"/v1/jobs/{row.id}"},
                            status_code=202, headers={"Location": f"/v1/jobs/{row.id}"})


def _feedback_route(app: FastAPI, ctx: HttpContext) -> None:
    feedback_scope = Depends(require(ctx, "feedback"))

    @app.post("/v1/jobs/{job_id}/feedback", status_code=201)
    async def feedback(job_id: str, verdict: Verdict, principal: Principal = feedback_scope) -> JSONResponse:
        """A reader's verdict on a job's result: stored, audited, counted in the model's agreement."""
        if ctx.record_feedback is None:
            raise Problem(404, "feedback is not recorded by this node")
        try:
            feedback_id = await to_thread.run_sync(lambda: ctx.record_feedback(  # type: ignore[misc]
                _job_id(job_id), verdict.agree, verdict.findings, verdict.comment, principal.name))
        except EdgeAIError as exc:
            kind = str(getattr(exc, "kind", "invalid"))
            raise Problem(_FEEDBACK_STATUS.get(kind, 422), str(exc), kind=kind.replace("_", "-")) from exc
        return JSONResponse({"feedback_id": str(feedback_id), "job_id": job_id}, status_code=201)


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    with contextlib.suppress(ValueError):  # Unix seconds; else an ISO 8601 time below
        return float(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Problem(400, "since must be an ISO 8601 time or Unix seconds") from exc
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _exception_handlers(app: FastAPI, ctx: HttpContext) -> None:
    @app.exception_handler(Problem)
    async def problem(_: Request, exc: Problem) -> Response:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        return Problem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return Problem(400, detail).response()

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Response:
        ctx.log.error("http_internal_error", error=type(exc).__name__)
        return Problem(500, f"internal error: {type(exc).__name__}").response()
