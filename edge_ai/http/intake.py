"""A request body into the spool, shared by the job API and STOW-RS: size limit, streaming in batches to a
worker thread, series completion at the end of the request, and the same audit lines as a C-STORE."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anyio import to_thread
from starlette.requests import ClientDisconnect, Request

from edge_ai.http import jobs_view
from edge_ai.http.auth import Principal
from edge_ai.http.body import BodyIngest, Outcome
from edge_ai.http.context import HttpContext
from edge_ai.http.problems import REFUSAL_ANSWERS, Problem

_BATCH_BYTES = 1 << 20  # chunks handed to the worker thread together: ~1 MB in memory per request


@dataclass
class Intake:
    request_id: str
    outcomes: list[Outcome] = field(default_factory=list)
    job_ids: list[int] = field(default_factory=list)  # distinct, in order of first instance
    body_sha256: str = ""
    bytes: int = 0

    @property
    def stored(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.refusal is not None]


def check_length(request: Request, limit: int) -> None:
    """413 from Content-Length alone, before a byte of the body is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"body of {declared} bytes is over http.max_request_bytes ({limit}); nothing was read",
                      kind="too-large")


async def receive(request: Request, ctx: HttpContext, principal: Principal, *, multipart_allowed: bool = True,
                  study_uid: str | None = None, model: str | None = None) -> Intake:
    """Stream the body into the spool; every instance is stored (fsync'd, indexed) or refused with a reason,
    and only once the whole body is in: a request that fails part-way keeps nothing.

    Raises:
        Problem: 413 over the limit (nothing of the request is kept), 415 wrong content type,
            400 a malformed multipart body.
    """
    limit = ctx.cfg.max_request_bytes
    check_length(request, limit)
    intake = Intake(request_id=f"h{uuid.uuid4().hex}")
    request.scope.setdefault("state", {})["intake"] = intake
    hasher = hashlib.sha256() if request.headers.get("idempotency-key") else None
    peer = request.client.host if request.client else ""
    body = BodyIngest(ctx.ingest, intake.request_id, request.headers.get("content-type", ""),
                      multipart_allowed=multipart_allowed, study_uid=study_uid,
                      on_outcome=_noter(ctx, intake, principal, peer, model), pool=ctx.finishers)
    jobs_view.request_opened(ctx.completion, intake.request_id)

    def feed(chunks: list[bytes]) -> None:
        if hasher is not None:  # only an Idempotency-Key needs the body's own hash
            for chunk in chunks:
                hasher.update(chunk)
        body.feed(chunks)

    try:
        await _stream(request, intake, feed, limit)
        intake.outcomes = await to_thread.run_sync(body.close)
    except (Problem, ClientDisconnect, OSError):
        await to_thread.run_sync(body.discard)
        intake.outcomes = body.outcomes
        await to_thread.run_sync(_finish, ctx, intake, False)
        raise
    intake.body_sha256 = hasher.hexdigest() if hasher is not None else ""
    await to_thread.run_sync(_finish, ctx, intake, True)
    return intake


async def _stream(request: Request, intake: Intake, feed: Callable[[list[bytes]], None], limit: int) -> None:
    """The body to `feed` in ~1 MB batches: a thread writes one batch while the loop reads the next, so at
    most two are in memory. Raises Problem 413 as soon as the body passes `limit`."""
    pending: asyncio.Future[None] | None = None
    try:
        batch: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            intake.bytes += len(chunk)
            if intake.bytes > limit:
                raise Problem(413, f"body passed http.max_request_bytes ({limit}); reading stopped, nothing of the "
                              "request was kept", kind="too-large")
            batch.append(chunk)
            size += len(chunk)
            if size >= _BATCH_BYTES:
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(to_thread.run_sync(feed, batch))
                batch, size = [], 0
        if pending is not None:
            await pending
            pending = None
        await to_thread.run_sync(feed, batch)
    finally:
        if pending is not None:  # never leave the thread writing while the caller discards
            with contextlib.suppress(Exception):
                await pending


def _noter(ctx: HttpContext, intake: Intake, principal: Principal, peer: str,
           model: str | None) -> Callable[[Outcome], None]:
    noting = threading.Lock()

    def note(outcome: Outcome) -> None:
        """As each instance is decided (in a pool thread): its audit line (as a C-STORE's) and its job."""
        try:
            _audit_instance(ctx, intake, outcome, principal, peer)
        except Exception:  # stored is stored: a failed audit line is logged, the answer stands
            ctx.log.exception("audit_write_failed", audit_event="instance", request_id=intake.request_id)
        if outcome.stored is None:
            return
        job = outcome.stored.outcome.job_id or jobs_view.latest_job_of_series(
            ctx.stores, outcome.stored.ref.series_instance_uid)
        with noting:
            if job and job not in intake.job_ids:
                intake.job_ids.append(job)
                if model is not None and not outcome.stored.outcome.duplicate:
                    ctx.requests.set_model(job, model)

    return note


def _finish(ctx: HttpContext, intake: Intake, complete: bool) -> None:
    """The request ended: complete, its series are whole now (as at an association's release); cut off,
    they wait for the series timeout (as after an abort)."""
    jobs_view.request_closed(ctx.completion, intake.request_id, complete)
    if complete and intake.stored:
        ctx.wake_worker()


def _audit_instance(ctx: HttpContext, intake: Intake, o: Outcome, principal: Principal, peer: str) -> None:
    common: dict[str, Any] = {"association": intake.request_id, "transport": "http", "peer": peer,
                              "principal": principal.name}
    if o.stored is not None:
        ref, out = o.stored.ref, o.stored.outcome
        ctx.audit("instance.stored", sop_class_uid=ref.sop_class_uid, sop_instance_uid=ref.sop_instance_uid,
                  study_uid=ref.study_instance_uid, series_uid=ref.series_instance_uid,
                  patient_id=o.stored.patient_id or None, bytes=ref.size,
                  sha256=ref.sha256, status=0, duplicate=out.duplicate or None, conflict=out.conflict or None,
                  reopened=out.reopened or None, **common)
    elif o.refusal is not None:
        ctx.log.warning("instance_rejected", transport="http", reason=o.refusal.reason)
        ctx.audit("instance.rejected", sop_class_uid=o.sop_class_uid[:64], sop_instance_uid=o.sop_instance_uid[:64],
                  status=REFUSAL_ANSWERS[o.refusal.kind][1], reason=o.refusal.reason, **common)


def instances_for_audit(intake: Intake) -> list[dict[str, Any]]:
    """Per instance for `http.request`: UID, sha256 and size (stored) or the refusal code."""
    out: list[dict[str, Any]] = []
    for o in intake.outcomes:
        if o.ok:
            out.append({"sop_instance_uid": o.sop_instance_uid, "sha256": o.sha256, "bytes": o.size})
        elif o.refusal is not None:
            out.append({"sop_instance_uid": o.sop_instance_uid[:64] or None, "bytes": o.size,
                        "failure": f"0x{REFUSAL_ANSWERS[o.refusal.kind][1]:04X}"})
    return out


async def hash_only(request: Request, limit: int) -> str:
    """The body's sha256, its bytes dropped (a repeated Idempotency-Key: nothing is stored again)."""
    check_length(request, limit)
    hasher, total = hashlib.sha256(), 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise Problem(413, f"body passed http.max_request_bytes ({limit})", kind="too-large")
        hasher.update(chunk)
    return hasher.hexdigest()
