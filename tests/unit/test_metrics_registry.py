"""Metrics: what a Prometheus scrape of one node shows, from the events the node produces."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge_ai.observability.metrics import Metrics


def _metrics(tmp_path: Path, counts: dict[str, int] | None = None) -> Metrics:
    return Metrics(
        lambda: counts or {"received": 2, "failed": 1}, tmp_path, lambda: {"demo": 0.4, "warm": None}
    )


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_audit_events_drive_counters(tmp_path: Path) -> None:
    """Stored, duplicate and rejected instances, associations and delivery retries are counted."""
    m = _metrics(tmp_path)
    for event, fields in [
        ("instance.stored", {}),
        ("instance.stored", {"duplicate": True}),
        ("instance.rejected", {"status": 0xA700}),
        ("association.accepted", {}),
        ("association.rejected", {}),
        ("delivery.attempt", {"destination": "pacs", "outcome": "retry"}),
        ("inference", {"model": "demo", "outcome": "positive"}),
        ("job.state", {"state": "ready"}),
    ]:
        m.observe_event(event, fields)
    s = _samples(m)
    assert s[("edge_ai_instances_total", (("outcome", "stored"),))] == 1
    assert s[("edge_ai_instances_total", (("outcome", "duplicate"),))] == 1
    assert s[("edge_ai_instances_total", (("outcome", "rejected"),))] == 1
    assert s[("edge_ai_errors_total", (("kind", "0xA700"), ("stage", "ingest")))] == 1
    assert s[("edge_ai_associations_total", (("outcome", "rejected"),))] == 1
    assert s[("edge_ai_errors_total", (("kind", "transient"), ("stage", "delivery")))] == 1
    assert s[("edge_ai_inferences_total", (("model", "demo"), ("outcome", "positive")))] == 1


def test_state_gauges_are_read_at_scrape_time(tmp_path: Path) -> None:
    """Jobs by state, spool free bytes and drift per model reflect the moment of the scrape."""
    counts = {"received": 2, "failed": 1}
    m = _metrics(tmp_path, counts)
    counts["received"] = 5
    s = _samples(m)
    assert s[("edge_ai_jobs", (("state", "received"),))] == 5
    assert s[("edge_ai_spool_free_bytes", ())] > 0
    assert s[("edge_ai_drift_score", (("model", "demo"),))] == 0.4
    assert ("edge_ai_drift_score", (("model", "warm"),)) not in s  # no score until its window is full
    assert ("edge_ai_gpus", ()) in s


def test_histograms_per_stage_and_time_to_result(tmp_path: Path) -> None:
    """Stage durations and time-to-result land in their histograms, labelled by stage and destination."""
    m = _metrics(tmp_path)
    m.observe_stage("inference", 0.2)
    m.observe_time_to_result("results", 3.0)
    m.observe_error("imaging", "ImagingError")
    s = _samples(m)
    assert s[("edge_ai_stage_seconds_count", (("stage", "inference"),))] == 1
    assert s[("edge_ai_time_to_result_seconds_sum", (("destination", "results"),))] == 3.0
    assert s[("edge_ai_errors_total", (("kind", "ImagingError"), ("stage", "imaging")))] == 1


def test_each_node_has_its_own_registry(tmp_path: Path) -> None:
    """Two nodes in one process (tests, reload) never share or clash over metrics."""
    a, b = _metrics(tmp_path), _metrics(tmp_path)
    a.observe_event("instance.stored", {})
    assert _samples(b)[("edge_ai_instances_total", (("outcome", "stored"),))] == 0


def test_http_endpoint_serves_prometheus_text(tmp_path: Path) -> None:
    """GET /metrics on the configured address answers in Prometheus text format."""
    m = _metrics(tmp_path)
    m.set_models({"demo": ("1.0.0", "onnxruntime")})
    port = m.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
            body = rsp.read().decode()
    finally:
        m.close()
    assert 'edge_ai_model_info{model="demo",runtime="onnxruntime",version="1.0.0"} 1.0' in body
    assert "# TYPE edge_ai_time_to_result_seconds histogram" in body
