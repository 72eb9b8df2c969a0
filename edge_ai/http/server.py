"""uvicorn in its own thread with its own event loop, started and stopped with the node."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from typing import Any

import uvicorn

from edge_ai.config import Config
from edge_ai.dicom.tls import server_context
from edge_ai.errors import ConfigError
from edge_ai.http import api
from edge_ai.http.auth import ApiKeys, Authenticator, JwtVerifier, Throttle, read_secret
from edge_ai.http.context import HttpContext
from edge_ai.http.requests_db import RequestsDB
from edge_ai.http.ui.dashboard import Dashboard

_START_TIMEOUT_S = 15.0


def build_auth(cfg: Config) -> tuple[Authenticator, ApiKeys]:
    """The key store and JWT verifier the config names; a named secret file that is missing or
    unreadable is a ConfigError naming its key (an unset hmac_key_file is made under storage.root)."""
    auth = cfg.http.auth
    secret = read_secret(cfg.api_key_secret_path, create=auth.hmac_key_file is None)
    keys = ApiKeys(cfg.api_keys_path, secret)
    keys.list()  # a store that does not parse fails here, naming http.auth.api_keys
    verifier = JwtVerifier(auth.jwt) if auth.jwt is not None else None
    return Authenticator(keys, verifier), keys


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The node's BCP 195 server context built from http.tls (the same checks as node.tls), or None."""
    return server_context(cfg.http.tls, key="http.tls") if cfg.http.tls.enabled else None


class HttpServer:
    def __init__(self, cfg: Config, ctx: HttpContext, keys: ApiKeys) -> None:
        self.cfg, self.ctx, self.keys = cfg, ctx, keys
        self.ssl = tls_context(cfg)
        self.dashboard = Dashboard(ctx, secure_cookie=self.ssl is not None)
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    def start(self) -> int:
        """Bind and serve; returns the port. Raises: ConfigError when the port cannot be bound."""
        http = self.cfg.http
        config = uvicorn.Config(api.create_app(self.ctx, self.dashboard), host=http.host, port=http.port,
                                log_config=None, access_log=False, server_header=False, timeout_graceful_shutdown=4,
                                lifespan="off", limit_concurrency=256)
        config.load()
        if self.ssl is not None:
            config.ssl = self.ssl  # uvicorn's own context lacks BCP 195's floor and ciphers: ours replaces it
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            raise ConfigError(f"http: cannot listen on {http.host}:{http.port}: "
                              f"{self._failed or 'address in use or not available'}")
        sockets = [s for srv in getattr(server, "servers", []) for s in srv.sockets]
        self.port = int(sockets[0].getsockname()[1]) if sockets else http.port
        self.dashboard.start()
        return self.port

    def _run(self) -> None:
        assert self._server is not None
        try:
            asyncio.run(self._server.serve())
        except BaseException as exc:  # SystemExit from uvicorn when the bind fails
            self._failed = exc

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def begin_stop(self) -> None:
        """503 for new requests from now on; requests in flight go on."""
        self.ctx.stopping.set()

    def stop(self, until: float) -> None:
        """Close the listener and let requests in flight finish until `until` (monotonic), then end."""
        self.ctx.stopping.set()
        self.dashboard.stop()
        server = self._server
        if server is not None:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, until - time.monotonic()))
            if self._thread.is_alive() and server is not None:
                server.force_exit = True
                self._thread.join(timeout=1.0)
        self.keys.flush()

    def close(self) -> None:
        """After the worker has stopped (it reads the models requests named)."""
        self.ctx.finishers.shutdown(wait=True)
        self.ctx.requests.close()

    def in_flight(self) -> int:
        server = self._server
        return len(server.server_state.tasks) if server is not None else 0


def make(cfg: Config, **parts: Any) -> HttpServer:
    """Everything the HTTP face needs, from the config and the node's parts (app.py's one call)."""
    authenticator, keys = build_auth(cfg)
    ctx = HttpContext(cfg=cfg.http, requests=RequestsDB(cfg.storage.root / "spool" / "http.sqlite3"),
                      auth=authenticator, throttle=Throttle(cfg.http.auth.max_failures_per_minute), **parts)
    return HttpServer(cfg, ctx, keys)
