"""RFC 9457 problem details, and the one table that turns an ingest refusal into HTTP answers."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from edge_ai.errors import Refusal

PROBLEM_TYPE = "application/problem+json"

# the one place a refusal becomes an HTTP status (job API) and a STOW-RS Failure Reason (PS3.18, PS3.4 B.2.3)
REFUSAL_ANSWERS: dict[Refusal, tuple[int, int]] = {
    Refusal.OUT_OF_RESOURCES: (507, 0xA700),
    Refusal.DATASET_MISMATCH: (400, 0xA900),
    Refusal.CANNOT_UNDERSTAND: (400, 0xC000),
    Refusal.SOP_CLASS_NOT_SUPPORTED: (400, 0x0122),
}
PROCESSING_FAILURE = 0x0110

_TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
    409: "Conflict", 411: "Length required", 413: "Content too large", 415: "Unsupported media type",
    422: "Unprocessable content", 429: "Too many requests", 500: "Internal error", 503: "Service unavailable",
    507: "Insufficient storage",
}


class Problem(Exception):
    """An HTTP error answered as application/problem+json (RFC 9457)."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None,
                 kind: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.kind = kind
        self.extra = extra

    def body(self) -> dict[str, Any]:
        slug = self.kind or _TITLES.get(self.status, "error").lower().replace(" ", "-")
        return {"type": f"urn:edge-ai:problem:{slug}", "title": _TITLES.get(self.status, "Error"),
                "status": self.status, "detail": self.detail, **self.extra}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers, media_type=PROBLEM_TYPE)


def refusal_problem(kind: Refusal, reason: str) -> Problem:
    return Problem(REFUSAL_ANSWERS[kind][0], reason, kind=kind.value.replace("_", "-"))
