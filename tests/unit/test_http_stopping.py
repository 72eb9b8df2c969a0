"""The HTTP app in-process over real spool, queue and audit: what clients see while the node stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from edge_ai import config
from edge_ai.grouping.completion import Completion
from edge_ai.http import api
from edge_ai.http.server import make
from edge_ai.observability import logging as obs_logging
from edge_ai.observability.audit import AuditLog
from edge_ai.service.stores import open_stores
from edge_ai.spool.ingest import Ingest
from edge_ai.spool.store import Spool


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Any, AuditLog, str]]:
    path = tmp_path / "edge-ai.yaml"
    path.write_text("storage: {root: var}\n")
    cfg = config.load(path)
    stores = open_stores(cfg.storage.root)
    audit = AuditLog(cfg.audit_path)
    ingest = Ingest(Spool(cfg.storage.root / "spool"), stores.db, stores.index, stores.jobs, 0)
    server = make(cfg, ingest=ingest, stores=stores, completion=Completion(stores.jobs, 1, 5), audit=audit.record,
                  log=obs_logging.get("test"), registry=CollectorRegistry(),
                  models=lambda: ["demo-chest-xr"], not_ready=lambda: [], wake_worker=lambda: None)
    key = server.keys.create("ops", ["read"])
    yield server, audit, key
    server.close()
    audit.close()
    stores.close()


def test_while_stopping_every_request_is_503_and_ready_says_so(parts: tuple[Any, AuditLog, str]) -> None:
    """Once the node stops, new requests get 503 problem+json with Retry-After, and the readiness probe fails."""
    server, audit, key = parts
    with TestClient(api.create_app(server.ctx)) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        assert client.get("/v1/health/ready").status_code == 200
        server.begin_stop()
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] and r.json()["detail"] == "the node is stopping"
        assert client.get("/v1/health/ready").status_code == 503
        assert client.get("/v1/health/live").status_code == 200
    events = [line for line in audit.path.read_text().splitlines() if '"http.request"' in line]
    assert len(events) == 5 and '"status":503' in events[2]
