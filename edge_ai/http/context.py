"""What the HTTP routes need from the node, handed in by app.py (the routes import no node internals)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edge_ai.config import Http
from edge_ai.grouping.completion import Completion
from edge_ai.http.auth import Authenticator, Throttle
from edge_ai.http.requests_db import RequestsDB
from edge_ai.service.stores import Stores
from edge_ai.spool.ingest import Ingest

Audit = Callable[..., None]


@dataclass
class HttpContext:
    cfg: Http
    ingest: Ingest
    stores: Stores
    completion: Completion
    requests: RequestsDB
    auth: Authenticator
    throttle: Throttle
    audit: Audit
    log: Any
    registry: Any  # prometheus_client CollectorRegistry of the node's metrics
    models: Callable[[], list[str]]  # names of the models being served
    not_ready: Callable[[], list[str]]  # reasons the node is not serving (empty: ready)
    wake_worker: Callable[[], None]
    # a reader's verdict on a job (App.record_feedback): (job id, agree, findings, comment, principal) -> id
    record_feedback: Callable[..., int] | None = None
    # for the dashboard (http/ui): each model's live and shadow version, hash, runtime (model_loading.describe);
    # the configured destinations; a fast verify of the live audit log (AuditTrail.check)
    describe_models: Callable[[], list[dict[str, Any]]] = list
    destinations: Callable[[], list[Any]] = list
    check_audit: Callable[[], Any] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    # instances of multipart bodies are made durable here while the next part is read (body.BodyIngest)
    finishers: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "http-store"))
    watch: JobWatch = field(default_factory=lambda: JobWatch())


class JobWatch:
    """Wakes requests waiting on a job (Prefer: wait) when the job store says the job changed."""

    def __init__(self) -> None:
        self._waiting: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()

    def changed(self, job_id: int) -> None:
        """Called from any thread."""
        with self._lock:
            waiting = list(self._waiting.get(job_id, ()))
        for loop, event in waiting:
            loop.call_soon_threadsafe(event.set)

    def add(self, job_id: int, event: asyncio.Event) -> None:
        with self._lock:
            self._waiting.setdefault(job_id, set()).add((asyncio.get_running_loop(), event))

    def remove(self, job_id: int, event: asyncio.Event) -> None:
        with self._lock:
            entries = self._waiting.get(job_id, set())
            entries.difference_update({e for e in entries if e[1] is event})
            if not entries:
                self._waiting.pop(job_id, None)
