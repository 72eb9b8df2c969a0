"""Around every request: 503 while the node stops, and one `http.request` audit line whatever the outcome
(principal, peer, method, path, status, job ids, sizes, sha256 of each instance). Never a header value:
no key or token reaches the audit or the log."""

from __future__ import annotations

import time
from typing import Any

from anyio import to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_ai.http.context import HttpContext
from edge_ai.http.intake import Intake, instances_for_audit
from edge_ai.http.problems import Problem


class RequestAudit:
    def __init__(self, app: ASGIApp, ctx: HttpContext) -> None:
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        seen: dict[str, Any] = {"status": 500, "sent": 0, "received": 0}
        started = time.monotonic()

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["received"] += len(message.get("body", b""))
            return message

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = int(message["status"])
            elif message["type"] == "http.response.body":
                seen["sent"] += len(message.get("body", b""))
            await send(message)

        try:
            if self.ctx.stopping.is_set() and path != "/v1/health/live":
                response = Problem(503, "the node is stopping", headers={"Retry-After": "10"}).response()
                await response(scope, counting_receive, watching_send)
            else:
                await self.app(scope, counting_receive, watching_send)
        finally:
            await to_thread.run_sync(self._record, scope, seen, time.monotonic() - started)

    def _record(self, scope: Scope, seen: dict[str, Any], seconds: float) -> None:
        state = scope.get("state", {})
        principal = state.get("principal")
        got: Intake | None = state.get("intake")
        client = scope.get("client")
        fields: dict[str, Any] = {
            "principal": principal.name if principal else None,
            "auth": principal.kind if principal else None,
            "peer": client[0] if client else None,
            "method": scope.get("method"),
            "path": str(scope.get("path", ""))[:512],
            "status": seen["status"],
            "request_bytes": seen["received"],
            "response_bytes": seen["sent"],
            "duration_s": round(seconds, 4),
        }
        if got is not None:
            fields["request_id"] = got.request_id
            fields["job_ids"] = [str(j) for j in got.job_ids]
            fields["instances"] = instances_for_audit(got)
        try:
            self.ctx.audit("http.request", **fields)
        except Exception:
            self.ctx.log.exception("audit_write_failed", audit_event="http.request")
