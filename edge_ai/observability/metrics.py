"""Prometheus metrics (SPEC "Metrics"), on a CollectorRegistry owned by one node, never the global one.

Counters and histograms are fed from the events the node already produces: the audit stream
(`observe_event`: instances, associations, deliveries, inference), the pipeline's stage timings
(`observe_stage`) and errors (`observe_error`), and the outbox's deliveries (`observe_delivered`).
Gauges that describe state (jobs by state, spool free bytes, GPU, drift) are read at scrape time
by a custom collector, so they are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_ai import __version__
from edge_ai.observability.host import HostCollector

_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STUDIES = 20000  # study UIDs remembered to count each study once
_TTR_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class _Gpu:
    """NVML (nvidia-ml-py) handles, or nothing where there is no driver, library or GPU."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[Any] = []
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.nvml = pynvml
        except Exception:  # no library, no driver, no device: GPU gauges are simply absent
            self.handles = []

    def sample(self) -> list[tuple[str, float, float, float]]:
        """(index, utilisation 0..1, memory used bytes, memory total bytes) per GPU."""
        out = []
        for i, handle in enumerate(self.handles):
            try:
                util = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # noqa: S112 (a GPU that fell off the bus must not break the scrape)
                continue
            out.append((str(i), util.gpu / 100.0, float(mem.used), float(mem.total)))
        return out


class _StateCollector(Collector):
    def __init__(
        self,
        job_counts: Callable[[], Mapping[str, int]],
        spool_root: Path,
        drift_scores: Callable[[], Mapping[str, float | None]],
        gpu: _Gpu,
        agreement: Callable[[], tuple[Mapping[str, float], Mapping[str, float]]] = lambda: ({}, {}),
    ) -> None:
        self.job_counts = job_counts
        self.spool_root = spool_root
        self.drift_scores = drift_scores
        self.gpu = gpu
        self.agreement = agreement

    def describe(self) -> list[Metric]:
        """Nothing up front: collect() reads live state, which may not exist yet at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("edge_ai_jobs", "Jobs in the spool by state", labels=["state"])
        with contextlib.suppress(Exception):  # a closed queue during shutdown: no samples this scrape
            for state, n in self.job_counts().items():
                jobs.add_metric([state], n)
        yield jobs
        free = GaugeMetricFamily("edge_ai_spool_free_bytes", "Free bytes on the spool's file system")
        size = GaugeMetricFamily("edge_ai_spool_size_bytes", "Size of the spool's file system")
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(self.spool_root)
            free.add_metric([], usage.free)
            size.add_metric([], usage.total)
        yield free
        yield size
        drift = GaugeMetricFamily(
            "edge_ai_drift_score",
            "Population stability index of recent inputs against the model's reference",
            labels=["model"],
        )
        for model, score in self.drift_scores().items():
            if score is not None:
                drift.add_metric([model], score)
        yield drift
        yield from self._agreement()
        samples = self.gpu.sample()
        count = GaugeMetricFamily("edge_ai_gpus", "NVIDIA GPUs visible to the node (0: none or no NVML)")
        count.add_metric([], len(samples))
        yield count
        if samples:
            util = GaugeMetricFamily(
                "edge_ai_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=["gpu"]
            )
            used = GaugeMetricFamily("edge_ai_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
            total = GaugeMetricFamily(
                "edge_ai_gpu_memory_total_bytes", "GPU memory installed", labels=["gpu"]
            )
            for index, u, m_used, m_total in samples:
                util.add_metric([index], u)
                used.add_metric([index], m_used)
                total.add_metric([index], m_total)
            yield from (util, used, total)


    def _agreement(self) -> Iterator[Metric]:
        readers = GaugeMetricFamily(
            "edge_ai_model_agreement",
            "Fraction of the live model's last models[].agreement_window reader verdicts that agree",
            labels=["model"],
        )
        shadow = GaugeMetricFamily(
            "edge_ai_shadow_agreement",
            "Fraction of recent series on which the shadow version gave the live version's verdict",
            labels=["model"],
        )
        with contextlib.suppress(Exception):  # a closed database during shutdown: no samples this scrape
            by_readers, by_shadow = self.agreement()
            for model, value in by_readers.items():
                readers.add_metric([model], value)
            for model, value in by_shadow.items():
                shadow.add_metric([model], value)
        yield readers
        yield shadow


class Metrics:
    """The node's metrics. Thread-safe (prometheus-client metrics are).

    Args:
        job_counts: queue.counts, read at scrape time.
        spool_root: where free space is measured.
        drift_scores: model -> score (None until the window is full), read at scrape time.
        agreement: (model -> reader agreement, model -> shadow agreement), read at scrape time.
    """

    def __init__(
        self,
        job_counts: Callable[[], Mapping[str, int]],
        spool_root: Path,
        drift_scores: Callable[[], Mapping[str, float | None]] = dict,
        agreement: Callable[[], tuple[Mapping[str, float], Mapping[str, float]]] = lambda: ({}, {}),
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instances = Counter(
            "edge_ai_instances",
            "Instances received, by outcome (stored, duplicate, rejected)",
            ["outcome"],
            registry=r,
        )
        self.associations = Counter(
            "edge_ai_associations",
            "Associations, by outcome (accepted, rejected, released, aborted)",
            ["outcome"],
            registry=r,
        )
        self.studies = Counter("edge_ai_studies", "Studies whose first instance this process stored", registry=r)
        self._studies_seen: OrderedDict[str, None] = OrderedDict()
        self._studies_lock = threading.Lock()
        self.errors = Counter("edge_ai_errors", "Errors by stage and kind", ["stage", "kind"], registry=r)
        self.inferences = Counter(
            "edge_ai_inferences", "Inferences by model and outcome", ["model", "outcome"], registry=r
        )
        self.deliveries = Counter(
            "edge_ai_deliveries",
            "Delivery attempts by destination and outcome",
            ["destination", "outcome"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "edge_ai_stage_seconds",
            "Time spent per pipeline stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.time_to_result = Histogram(
            "edge_ai_time_to_result_seconds",
            "Last instance of a series received -> SR accepted by the destination",
            ["destination"],
            buckets=_TTR_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "edge_ai_model_info", "Served models (value 1)", ["model", "version", "runtime"], registry=r
        )
        Gauge("edge_ai_build_info", "edge_ai version (value 1)", ["version"], registry=r).labels(
            __version__
        ).set(1)
        self.atna_queued = Gauge("edge_ai_atna_queued_messages",
                                 "Audit messages waiting for the Audit Record Repository (IHE ATNA)", registry=r)
        self.atna_oldest = Gauge("edge_ai_atna_oldest_queued_seconds",
                                 "Age of the oldest audit message waiting for the repository (0: none)", registry=r)
        for outcome in ("stored", "duplicate", "rejected"):
            self.instances.labels(outcome)
        for outcome in ("accepted", "rejected", "released", "aborted"):
            self.associations.labels(outcome)
        self.gpu = _Gpu()
        r.register(_StateCollector(job_counts, spool_root, drift_scores, self.gpu, agreement))
        r.register(HostCollector())
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self._server: Any = None
        self._thread: Any = None

    def set_models(self, models: Mapping[str, tuple[str, str]]) -> None:
        """The served models, name -> (version, runtime); replaces the previous set (reload)."""
        self.model_info.clear()
        for name, (version, runtime) in models.items():
            self.model_info.labels(name, version, runtime).set(1)

    # ---- feeding -------------------------------------------------------------------------------
    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def observe_error(self, stage: str, kind: str) -> None:
        self.errors.labels(stage, kind).inc()

    def observe_atna(self, queued: int, oldest_s: float | None) -> None:
        self.atna_queued.set(queued)
        self.atna_oldest.set(oldest_s or 0.0)

    def observe_time_to_result(self, destination: str, seconds: float) -> None:
        self.time_to_result.labels(destination).observe(max(0.0, seconds))

    def observe_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """One audit event -> the counters it implies (unknown events are ignored)."""
        if event == "instance.stored":
            self.instances.labels("duplicate" if fields.get("duplicate") else "stored").inc()
            self._study(str(fields.get("study_uid") or ""))
        elif event == "instance.rejected":
            self.instances.labels("rejected").inc()
            self.errors.labels("ingest", f"0x{int(fields.get('status') or 0):04X}").inc()
        elif event.startswith("association."):
            outcome = event.partition(".")[2]
            self.associations.labels(outcome).inc()
            if outcome in ("rejected", "aborted"):
                self.errors.labels("association", outcome).inc()
        elif event == "inference":
            self.inferences.labels(str(fields.get("model", "")), str(fields.get("outcome", ""))).inc()
        elif event == "delivery.attempt":
            outcome = str(fields.get("outcome", ""))
            self.deliveries.labels(str(fields.get("destination", "")), outcome).inc()
            if outcome in ("retry", "dead_letter"):
                self.errors.labels("delivery", "transient" if outcome == "retry" else "dead_letter").inc()
        elif event == "model.rejected":
            self.errors.labels("model", "rejected").inc()

    def _study(self, uid: str) -> None:
        """Count a study the first time one of its instances is stored (remembering the last _STUDIES)."""
        with self._studies_lock:
            if not uid or uid in self._studies_seen:
                return
            self._studies_seen[uid] = None
            if len(self._studies_seen) > _STUDIES:
                self._studies_seen.popitem(last=False)
        self.studies.inc()

    # ---- serving -------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (/metrics) in a daemon thread; returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
