"""What the dashboard shows, built from one collection of the node's metrics registry (the numbers
/metrics serves), its sampled history, and the job store read through jobs_view (the rows
`edge-ai status` prints). Nothing here names a patient: the stores hold UIDs, never names.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

from edge_ai.http import jobs_view
from edge_ai.http.context import HttpContext
from edge_ai.http.ui import charts
from edge_ai.http.ui.readings import DAY_S, FINE_S, HOUR_S, ZERO, History, Reading, increase, key, window_quantile

TTR = "edge_ai_time_to_result_seconds"
STATES = ("received", "ready", "inferring", "reported", "delivered", "failed")
_LIST_LIMIT = 20


@dataclass
class Fig:
    """One figure: its text, and the metric series it shows (data-metric on the page) with its raw value."""

    label: str
    text: str
    metric: str = ""
    value: float | None = None
    derived: str = ""  # names a figure computed from metrics over a window (ttr_p50_hour, ...)


@dataclass
class Window:
    name: str  # hour | day
    label: str  # "last hour" or "since start (12 min)"
    figs: list[Fig] = field(default_factory=list)


def when(t: Any) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def secs(v: float | None) -> str:
    return "-" if v is None else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s")


def short_uid(uid: Any) -> str:
    """The last 12 characters of a UID: enough to tell results apart and to find one in the audit."""
    text = str(uid or "")
    return text if len(text) <= 14 else "…" + text[-12:]


def _metric(r: Reading, label: str, name: str, fmt: Any = None, **labels: str) -> Fig:
    value = r.get(name, **labels)
    text = "-" if value is None else (fmt(value) if fmt else f"{value:.0f}")
    return Fig(label, text, key(name, labels), value)


def _window(now: Reading, history: History, name: str, length: float) -> Window:
    start, real = history.baseline(now.t, length)
    label = ("last hour" if name == "hour" else "last 24 h") if start is not ZERO else f"since start ({ago(real)})"
    w = Window(name, label)
    w.figs.append(Fig("Instances stored", f"{increase(now, start, 'edge_ai_instances_total', outcome='stored'):.0f}",
                      derived=f"instances_{name}"))
    w.figs.append(Fig("Studies", f"{increase(now, start, 'edge_ai_studies_total'):.0f}", derived=f"studies_{name}"))
    results = increase(now, start, TTR + "_count")
    w.figs.append(Fig("SRs accepted by destinations", f"{results:.0f}", derived=f"results_{name}"))
    for q in (50, 95):
        value = window_quantile(q / 100, now, start, TTR)
        w.figs.append(Fig(f"Time to result p{q}", secs(value), value=value, derived=f"ttr_p{q}_{name}"))
    errors = increase(now, start, "edge_ai_errors_total")
    stages = {k: v - start.by_label("edge_ai_errors_total", "stage").get(k, 0.0)
              for k, v in now.by_label("edge_ai_errors_total", "stage").items()}
    detail = ", ".join(f"{k} {v:.0f}" for k, v in sorted(stages.items()) if v > 0)
    w.figs.append(Fig("Errors", f"{errors:.0f}" + (f" ({detail})" if detail else ""), value=errors,
                      derived=f"errors_{name}"))
    return w


def _system(now: Reading, history: History) -> list[Fig]:
    figs: list[Fig] = []
    before = next((r for r in reversed(history.recent(now.t - 4 * FINE_S)) if now.t - r.t >= FINE_S / 2), None)
    if before is not None:
        busy = now.total("edge_ai_host_cpu_seconds_total", mode="busy") - before.total(
            "edge_ai_host_cpu_seconds_total", mode="busy")
        idle = now.total("edge_ai_host_cpu_seconds_total", mode="idle") - before.total(
            "edge_ai_host_cpu_seconds_total", mode="idle")
        own = now.total("process_cpu_seconds_total") - before.total("process_cpu_seconds_total")
        cores = now.get("edge_ai_host_cpus") or 1.0
        if busy + idle > 0:
            figs.append(Fig("CPU busy (host)", f"{busy / (busy + idle):.0%}", derived="cpu_host"))
            figs.append(Fig("CPU (edge_ai)", f"{own / (now.t - before.t) / cores:.0%} of {cores:.0f} cores",
                            derived="cpu_process"))
    total, avail = now.get("edge_ai_host_memory_total_bytes"), now.get("edge_ai_host_memory_available_bytes")
    if total and avail is not None:
        figs.append(Fig("Memory available", f"{size(avail)} of {size(total)}", key(
            "edge_ai_host_memory_available_bytes", {}), avail))
    figs.append(_metric(now, "Memory (edge_ai)", "process_resident_memory_bytes", size))
    free, disk = now.get("edge_ai_spool_free_bytes"), now.get("edge_ai_spool_size_bytes")
    figs.append(Fig("Spool disk free", f"{size(free)} of {size(disk)}" if disk else size(free),
                    "edge_ai_spool_free_bytes", free))
    return figs


def _gpus(now: Reading) -> list[dict[str, Any]]:
    util = now.by_label("edge_ai_gpu_utilization_ratio", "gpu")
    used = now.by_label("edge_ai_gpu_memory_used_bytes", "gpu")
    total = now.by_label("edge_ai_gpu_memory_total_bytes", "gpu")
    return [{"index": g, "util": Fig(f"GPU {g} busy", f"{util[g]:.0%}", key("edge_ai_gpu_utilization_ratio",
                                                                             {"gpu": g}), util[g]),
             "memory": Fig(f"GPU {g} memory", f"{size(used.get(g))} of {size(total.get(g))}",
                           key("edge_ai_gpu_memory_used_bytes", {"gpu": g}), used.get(g))}
            for g in sorted(util)]


def _models(ctx: HttpContext, now: Reading, history: History) -> list[dict[str, Any]]:
    out = []
    day = [*history.recent(now.t - DAY_S, coarse=True), now]
    for m in ctx.describe_models():
        name = m["name"]
        drift = _metric(now, "Drift score", "edge_ai_drift_score", lambda v: f"{v:.3f}", model=name)
        agreement = _metric(now, "Reader agreement", "edge_ai_model_agreement", lambda v: f"{v:.0%}", model=name)
        shadow = _metric(now, "Shadow agrees with live", "edge_ai_shadow_agreement", lambda v: f"{v:.0%}", model=name)
        threshold = m.get("drift_threshold")
        points = [(r.t, r.get("edge_ai_drift_score", model=name)) for r in day]
        chart = charts.line_chart(f"Drift score of {name}, last 24 h", [charts.Line("drift", points)],
                                  day[0].t, now.t, threshold=threshold)
        out.append({**m, "drift": drift, "agreement": agreement, "shadow_agreement": shadow, "chart": chart,
                    "drifting": drift.value is not None and threshold is not None and drift.value > threshold})
    return out


def _per_minute(readings: list[Reading], fn: Any) -> list[tuple[float, float | None]]:
    picks = readings[:: max(1, int(60 / FINE_S))]
    if readings and picks[-1] is not readings[-1]:
        picks.append(readings[-1])
    return [(b.t, fn(b, a)) for a, b in itertools.pairwise(picks)]


def _trend_charts(now: Reading, history: History) -> dict[str, Markup]:
    t0 = max(now.t - HOUR_S, history.started_at)  # a node up for minutes gets a chart of those minutes
    readings = history.recent(t0)
    if history.started_at >= t0:
        readings = [Reading(history.started_at, {}), *readings]
    readings.append(now)

    def per_minute(b: Reading, a: Reading, count: float) -> float:  # the newest interval is shorter
        return count * 60 / max(b.t - a.t, FINE_S)

    def counted(b: Reading, a: Reading) -> float:
        return per_minute(b, a, increase(b, a, "edge_ai_instances_total", outcome="stored"))

    def results(b: Reading, a: Reading) -> float:
        return per_minute(b, a, increase(b, a, TTR + "_count"))

    throughput = charts.line_chart("Instances stored and SRs accepted per minute, last hour", [
        charts.Line("instances", _per_minute(readings, counted), "s1"),
        charts.Line("results", _per_minute(readings, results), "s2")], t0, now.t)
    ttr = charts.line_chart("Time to result p50 and p95 per minute, last hour", [
        charts.Line("p50", _per_minute(readings, lambda b, a: window_quantile(0.5, b, a, TTR)), "s1"),
        charts.Line("p95", _per_minute(readings, lambda b, a: window_quantile(0.95, b, a, TTR)), "s2")],
        t0, now.t, unit=" s")
    return {"throughput": throughput, "ttr": ttr}


def _destinations(ctx: HttpContext) -> list[dict[str, Any]]:
    activity = jobs_view.destination_activity(ctx.stores)
    out = []
    for d in ctx.destinations():
        a = activity.get(d.name, {})
        where = f"{d.ae_title} at {d.host}:{d.port}" if d.type == "dicom" else f"folder {d.path}"
        state, error = a.get("last_state"), str(a.get("last_error") or "")
        if state is None:
            reach = ("unknown", "no delivery attempted yet")
        elif state == "delivered":
            reach = ("ok", f"reachable (last attempt {ago(time.time() - float(a['last_attempt']))} ago)")
        elif state == "retried":
            reach = ("unknown", "its failed deliveries were retried: waiting for the next attempt")
        else:
            reach = ("bad", f"not reachable: {error or state}")
        out.append({"name": d.name, "where": where, "reach": reach, "last_delivered": when(a.get("last_delivered")),
                    "pending": int(a.get("pending") or 0), "dead": int(a.get("dead") or 0)})
    return out


def build(ctx: HttpContext, history: History, now: Reading, audit: dict[str, Any]) -> dict[str, Any]:
    """Everything the live part of the page shows."""
    stores = ctx.stores
    dead = stores.deliveries.dead_letters()
    return {
        "now": when(now.t),
        "uptime": ago(now.t - history.started_at),
        "windows": [_window(now, history, "hour", HOUR_S), _window(now, history, "day", DAY_S)],
        "totals": [_metric(now, "Instances stored", "edge_ai_instances_total", outcome="stored"),
                   _metric(now, "Instances rejected", "edge_ai_instances_total", outcome="rejected"),
                   _metric(now, "Studies", "edge_ai_studies_total"),
                   Fig("SRs accepted", f"{now.total(TTR + '_count'):.0f}", derived="results_total",
                       value=now.total(TTR + "_count")),
                   Fig("Errors", f"{now.total('edge_ai_errors_total'):.0f}", derived="errors_total",
                       value=now.total("edge_ai_errors_total"))],
        "jobs": [_metric(now, s, "edge_ai_jobs", state=s) for s in STATES],
        "results": [{**r, "series": short_uid(r["series_uid"]), "sr": short_uid(r["sop_instance_uid"]),
                     "time": when(r["created_at"])} for r in stores.jobs.recent_reports(10)],
        "failed": [{"id": j.id, "series": short_uid(j.series_uid), "reason": j.reason, "time": when(j.updated_at)}
                   for j in jobs_view.list_jobs(stores, "failed", None, _LIST_LIMIT)],
        "dead": [{**d, "sr": short_uid(d["sop_instance_uid"]), "series": short_uid(d["series_uid"]),
                  "time": when(d["updated_at"])} for d in dead[-_LIST_LIMIT:][::-1]],
        "dead_count": len(dead),
        "destinations": _destinations(ctx),
        "models": _models(ctx, now, history),
        "system": _system(now, history),
        "gpus": _gpus(now),
        "gpu_count": int(now.get("edge_ai_gpus") or 0),
        "audit": audit,
        "charts": _trend_charts(now, history),
    }
