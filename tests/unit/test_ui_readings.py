"""The dashboard's arithmetic over the metrics registry: windows, histogram quantiles, sessions."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from edge_ai.http.ui import readings
from edge_ai.http.ui.sessions import Sessions


def test_a_window_longer_than_the_uptime_counts_from_zero() -> None:
    """Right after a start the page's "last hour" is everything since start, labelled so, as /metrics counts it."""
    r = CollectorRegistry()
    c = Counter("edge_ai_instances", "x", ["outcome"], registry=r)
    history = readings.History(started_at=time.time() - 60)
    c.labels("stored").inc(3)
    now = readings.read(r)
    start, length = history.baseline(now.t, readings.HOUR_S)
    assert start is readings.ZERO and 59 < length < 62
    assert readings.increase(now, start, "edge_ai_instances_total", outcome="stored") == 3


def test_a_window_shorter_than_the_uptime_starts_at_the_sample_before_it() -> None:
    """An hour-old node counts only what happened in the last hour, from the sample taken an hour ago."""
    history = readings.History(started_at=1000.0)
    for t in range(1000, 1000 + 7200, 5):
        history.add(readings.Reading(float(t), {'c_total': float(t - 1000)}))
    now = readings.Reading(8200.0, {"c_total": 7200.0})
    start, length = history.baseline(now.t, readings.HOUR_S)
    assert start.t == 4600.0 and length == pytest.approx(3600.0)
    assert readings.increase(now, start, "c_total") == 3600.0


def test_quantile_interpolates_within_a_bucket_as_prometheus_does() -> None:
    """Time-to-result p50/p95 on the page are what histogram_quantile gives for the same buckets."""
    r = CollectorRegistry()
    h = Histogram("edge_ai_time_to_result_seconds", "x", ["destination"], buckets=(0.5, 1, 2, 5), registry=r)
    for v in (0.3, 0.4, 1.5, 3.0):
        h.labels("pacs").observe(v)
    now = readings.read(r)
    assert readings.window_quantile(0.5, now, readings.ZERO, "edge_ai_time_to_result_seconds") == 0.5
    assert readings.window_quantile(0.75, now, readings.ZERO, "edge_ai_time_to_result_seconds") == 2.0
    assert readings.window_quantile(0.95, now, readings.ZERO, "edge_ai_time_to_result_seconds") == pytest.approx(4.4)
    assert readings.window_quantile(0.5, readings.ZERO, readings.ZERO, "edge_ai_time_to_result_seconds") is None


def test_sessions_expire_go_idle_and_end() -> None:
    """A session works until sign-out, its lifetime, or a long idle spell; a forged token finds nothing."""
    sessions = Sessions(lifetime_s=60, idle_s=30)
    token, s = sessions.create("it", frozenset({"read"}), "abcd1234")
    assert sessions.get(token) is s and sessions.get("forged") is None
    s.last_seen -= 31
    assert sessions.get(token) is None
    token, s = sessions.create("it", frozenset({"read"}), "abcd1234")
    s.expires = time.time() - 1
    assert sessions.get(token) is None
    token, s = sessions.create("it", frozenset({"read"}), "abcd1234")
    assert sessions.end(token) is s and sessions.get(token) is None
    assert s.csrf_ok(s.csrf) and not s.csrf_ok("x") and not s.csrf_ok(None)


def test_gpu_figures_come_from_the_nvml_gauges() -> None:
    """Where NVML answers, each GPU's busy fraction and memory show under System, named by their metric."""
    from edge_ai.http.ui.figures import _gpus

    now = readings.Reading(0.0, {'edge_ai_gpu_utilization_ratio{gpu="0"}': 0.42,
                                 'edge_ai_gpu_memory_used_bytes{gpu="0"}': 2 * 1024**3,
                                 'edge_ai_gpu_memory_total_bytes{gpu="0"}': 8 * 1024**3})
    (gpu,) = _gpus(now)
    assert gpu["util"].text == "42%" and gpu["util"].metric == 'edge_ai_gpu_utilization_ratio{gpu="0"}'
    assert gpu["memory"].text == "2.0 GiB of 8.0 GiB" and gpu["memory"].value == 2 * 1024**3
    assert _gpus(readings.Reading(0.0, {})) == []


def test_a_full_days_history_stays_small_and_reads_as_the_registry_did() -> None:
    """The sampler keeps ~2,200 readings (a day): packed over shared keys they take a few MB (a dict per
    reading took ~125 MB and grew RSS through the first day), and every value, sum and label split read
    back from the history is the one the registry gave, series that appear later and vanish included."""
    import tracemalloc

    series = [(readings.key(f"edge_ai_m{m}_bucket", {"le": str(le), "model": f"m{k}"}), m + le + k)
              for m in range(10) for le in (0.1, 0.5, 1, 5, 10) for k in range(6)]

    def sample(t: int) -> dict[str, float]:  # a new key string per reading, as `read` makes them
        values = {"".join(name): t * shift for name, shift in series}
        if t % 3 == 0:
            values[readings.key("edge_ai_late_total", {"destination": "pacs"})] = float(t)
        return values

    tracemalloc.start()
    history = readings.History(started_at=0.0)
    for t in range(0, readings.HOUR_S.__int__() * 24 + 3600, int(readings.COARSE_S)):  # one a minute, a day
        history.add(readings.Reading(float(t), sample(t)))
    for t in range(0, 3600, int(readings.FINE_S)):
        history.add(readings.Reading(float(90000 + t), sample(t)))
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(history.coarse) + len(history.fine) > 2100
    assert held < 12e6, f"a day's history holds {held / 1e6:.1f} MB"
    for r in (history.fine[-1], history.coarse[0], history.coarse[-7]):
        expected = readings.Reading(r.t, sample(int(r.t) if r.t < 90000 else int(r.t) - 90000))
        assert dict(r.values) == dict(expected.values)
        assert r.total("edge_ai_m3_bucket", model="m2") == expected.total("edge_ai_m3_bucket", model="m2")
        assert r.by_label("edge_ai_m1_bucket", "le") == expected.by_label("edge_ai_m1_bucket", "le")
        assert r.get("edge_ai_late_total", destination="pacs") == expected.get("edge_ai_late_total",
                                                                                destination="pacs")
