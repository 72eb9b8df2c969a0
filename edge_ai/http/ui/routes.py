"""/ui/: the dashboard page, its self-refreshing live part, sign-in and sign-out, and Retry (SPEC "Dashboard").

Server-rendered (Jinja2, autoescaped). A request without a live session gets only the sign-in form. Every
POST must carry the session's CSRF token (sign-in has no session yet) and, where the browser sends one,
an Origin of this node. Sign-in, sign-out and Retry are audited (`ui.signin`, `ui.signout`, `ui.retry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from edge_ai import __version__
from edge_ai.http import jobs_view
from edge_ai.http.auth import AuthFailed, Principal
from edge_ai.http.ui import figures, readings
from edge_ai.http.ui.dashboard import Dashboard
from edge_ai.http.ui.sessions import COOKIE, Session

HERE = Path(__file__).parent
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chromium send Origin: null on forms
}
_ENV = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
_ENV.globals["version"] = __version__


def _html(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(_ENV.get_template(template).render(**values), status_code=status, headers=HEADERS)


def _peer(request: Request) -> str:
    return request.client.host if request.client else ""


def _see(path: str) -> Response:
    return RedirectResponse(path, status_code=303, headers=HEADERS)


class Routes:
    def __init__(self, dash: Dashboard) -> None:
        self.dash, self.ctx = dash, dash.ctx

    def session(self, request: Request) -> Session | None:
        """The request's live session (None when absent, expired, idle or its key revoked); the audit line
        of the request names its principal."""
        token = request.cookies.get(COOKIE)
        found = self.dash.sessions.get(token)
        if found is not None and not self.ctx.auth.keys.holds(found.principal, found.key_prefix):
            self.dash.sessions.end(token)
            found = None
        if found is not None:
            request.scope.setdefault("state", {})["principal"] = Principal(found.principal, found.scopes, "session")
        return found

    def same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def page(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return _html("signin.html")
        notice, session.notice = session.notice, ""
        view = await self.live_view()
        return _html("dashboard.html", session=session, notice=notice, v=view)

    async def live_view(self) -> dict[str, Any]:
        now = await to_thread.run_sync(readings.read, self.ctx.registry)
        return await to_thread.run_sync(figures.build, self.ctx, self.dash.history, now, self.dash.audit)

    async def live(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return _html("signin.html", 401, error="Your session has ended: sign in again.")
        return _html("_live.html", session=session, v=await self.live_view())

    async def signin(self, request: Request) -> Response:
        peer = _peer(request)
        if not self.same_origin(request):
            return _html("signin.html", 403, error="Sign-in refused: the form did not come from this node.")
        if self.ctx.throttle.retry_after(peer) > 0:
            return _html("signin.html", 429, error="Too many failed sign-ins from this address: wait a minute.")
        form = await request.form()
        key = str(form.get("api_key") or "").strip()[:200]
        try:
            principal = await to_thread.run_sync(self.ctx.auth.keys.verify, key)
        except AuthFailed as exc:
            self.ctx.throttle.failed(peer)
            self.ctx.audit("ui.signin", principal=None, peer=peer, outcome="failure", reason=str(exc))
            return _html("signin.html", 401, error="That API key was not accepted.")
        if "read" not in principal.scopes:
            self.ctx.audit("ui.signin", principal=principal.name, peer=peer, outcome="failure",
                           reason="the key lacks the read scope")
            return _html("signin.html", 403, error="That API key lacks the read scope the dashboard needs.")
        token, _ = self.dash.sessions.create(principal.name, principal.scopes, key[4:12])
        request.scope.setdefault("state", {})["principal"] = principal
        self.ctx.audit("ui.signin", principal=principal.name, peer=peer, outcome="ok",
                       scopes=sorted(principal.scopes))
        response = _see("/ui/")
        response.set_cookie(COOKIE, token, max_age=int(self.dash.sessions.lifetime_s), path="/ui", httponly=True,
                            samesite="strict", secure=self.dash.secure_cookie)
        return response

    async def signout(self, request: Request) -> Response:
        session = self.session(request)
        form = await request.form()
        if session is not None and self.same_origin(request) and session.csrf_ok(str(form.get("csrf") or "")):
            self.dash.sessions.end(request.cookies.get(COOKIE))
            self.ctx.audit("ui.signout", principal=session.principal, peer=_peer(request), outcome="ok")
        elif session is not None:
            return _html("signin.html", 403, error="Sign-out refused: the form was not this page's.")
        response = _see("/ui/")
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict", secure=self.dash.secure_cookie)
        return response

    async def retry(self, request: Request, job_id: str) -> Response:
        session = self.session(request)
        if session is None:
            return _see("/ui/")
        form = await request.form()
        peer = _peer(request)
        if not self.same_origin(request) or not session.csrf_ok(str(form.get("csrf") or "")):
            self.ctx.audit("ui.retry", principal=session.principal, peer=peer, job=job_id[:20], outcome="refused",
                           reason="missing or wrong CSRF token")
            return _html("signin.html", 403, error="Retry refused: the form was not this page's. Reload it.")
        if "admin" not in session.scopes:
            self.ctx.audit("ui.retry", principal=session.principal, peer=peer, job=job_id[:20], outcome="refused",
                           reason="the key lacks the admin scope")
            session.notice = "Retry needs a key with the admin scope."
            return _see("/ui/#failed")
        outcome = await to_thread.run_sync(self._retry, job_id)
        self.ctx.audit("ui.retry", principal=session.principal, peer=peer, job=job_id[:20], outcome=outcome)
        session.notice = {"queued": f"Job {job_id} is back in the queue.",
                          "not_failed": f"Job {job_id} is not failed (any more): nothing to retry.",
                          }.get(outcome, f"There is no job {job_id[:20]}.")
        return _see("/ui/#failed")

    def _retry(self, job_id: str) -> str:
        if not job_id.isdigit() or len(job_id) > 18 or jobs_view.get_job(self.ctx.stores, int(job_id)) is None:
            return "unknown_job"
        if not jobs_view.retry(self.ctx.stores, int(job_id)):
            return "not_failed"
        self.ctx.wake_worker()
        return "queued"


def add_routes(app: FastAPI, dash: Dashboard) -> None:
    r = Routes(dash)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.add_api_route("/ui", lambda: RedirectResponse("/ui/", status_code=308), include_in_schema=False)
    app.add_api_route("/ui/", r.page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui/live", r.live, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui/signin", r.signin, methods=["POST"], include_in_schema=False)
    app.add_api_route("/ui/signout", r.signout, methods=["POST"], include_in_schema=False)
    app.add_api_route("/ui/jobs/{job_id}/retry", r.retry, methods=["POST"], include_in_schema=False)
