"""Composition root: builds every component from the config, owns the threads and signals."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from edge_ai import __version__
from edge_ai.config import Config
from edge_ai.config import load as config_load
from edge_ai.dicom.scp import StorageSCP
from edge_ai.domain import JobState
from edge_ai.errors import ConfigError, ModelError
from edge_ai.grouping.completion import Completion
from edge_ai.http import server as http_server
from edge_ai.inference.package import load_package
from edge_ai.inference.threads import yield_to_reception
from edge_ai.observability import logging as obs_logging
from edge_ai.observability import pending
from edge_ai.observability.agreement import Agreement, Policy, ShadowAgreement
from edge_ai.observability.audit_trail import AuditTrail
from edge_ai.observability.drift import DriftMonitor
from edge_ai.observability.drift_jobs import DriftJobs
from edge_ai.observability.metrics import Metrics
from edge_ai.outbox.deliveries import Delivery
from edge_ai.outbox.sender import Outbox
from edge_ai.report.sr import DeviceInfo
from edge_ai.service import memory
from edge_ai.service import status as node_status
from edge_ai.service.inferring import Runner
from edge_ai.service.model_loading import describe, load_models, load_shadows
from edge_ai.service.stores import FILENAME as STORES_FILE
from edge_ai.service.stores import open_stores
from edge_ai.service.systemd import Notifier
from edge_ai.service.workers import Pipeline, Served
from edge_ai.spool import retention
from edge_ai.spool.ingest import Ingest
from edge_ai.spool.store import Spool

_STOP_BUDGET_S = 8.0  # SIGTERM -> exit, leaving margin under systemd's 10 s
_DRAIN_S = 4.0  # of which associations in progress may use this much
_PURGE_INTERVAL_S = 3600.0  # spool retention runs at start and then hourly
SWITCH_INTERVAL_S = 0.0005  # the GIL's switch interval (App.start)


class App:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.log = obs_logging.get("edge_ai")
        self.notifier = Notifier()
        self._stop = threading.Event()
        self._wake_worker = threading.Event()
        self._wake_outbox = threading.Event()
        self._reload = threading.Event()
        self._refreeze = threading.Event()  # a reload replaced the models: the worker thaws and freezes again
        root = cfg.storage.root
        root.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics(lambda: self.stores.jobs.counts(), root, lambda: self.drift.scores(),
                               agreement=lambda: (self.agreement.values(), self.shadow_agreement.values()))
        self.audit_trail = AuditTrail(cfg, self.log, on_lag=self.metrics.observe_atna)
        self.audit_log = self.audit_trail.log_file
        self.metrics_port: int | None = None
        self.audit = self._audited
        self.spool = Spool(root / "spool")
        self.stores = open_stores(root, listener=self._on_job_state, on_error=self._after_commit_failed)
        g = cfg.grouping
        self.completion = Completion(self.stores.jobs, g.quiet_window_s, g.series_timeout_s, g.aborted_timeout_s)
        self.models, self.model_checks = load_models(cfg, self.audit, self.log)
        self.shadows = load_shadows(cfg, self.models, self.audit, self.log)
        self.drift = DriftMonitor({}, cfg.drift.window, cfg.drift.threshold, self.audit, self.log)
        db = root / STORES_FILE
        self.agreement = Agreement(db, {}, self.audit, self.log)
        self.shadow_agreement = ShadowAgreement()
        self.drift_jobs = DriftJobs(db)
        self._models_changed()
        self.runner = Runner(self.stores.outputs, self._on_tensor)  # imaging threads, shared across reloads
        self.pipeline = self._make_pipeline(cfg, self.models)
        self.outbox = Outbox(
            self.stores.deliveries, list(cfg.destinations or []), cfg.node.ae_title, self.audit, self.log,
            on_delivered=self._on_delivered,
        )
        self._started_at = time.time()
        self.ingest = Ingest(self.spool, self.stores.db, self.stores.index, self.stores.jobs,
                             cfg.storage.min_free_bytes, cfg.storage.max_instance_bytes,
                             carried=self._carried)
        self.scp = StorageSCP(cfg.node, self.ingest, self.audit, self.log, completion=self.completion)
        self.http = http_server.make(
            cfg, ingest=self.ingest, stores=self.stores, completion=self.completion, audit=self.audit,
            log=self.log, registry=self.metrics.registry, models=lambda: sorted(self.models),
            not_ready=self._not_ready, wake_worker=self._wake_worker.set, record_feedback=self.record_feedback,
            describe_models=lambda: describe(self.models, self.shadows, self.drift.threshold),
            check_audit=self.audit_trail.check,
            destinations=lambda: list(self.outbox.destinations.values()),
        ) if cfg.http.enabled else None
        self._threads: list[threading.Thread] = []

    def _make_pipeline(self, cfg: Config, models: dict[str, Served]) -> Pipeline:
        return Pipeline(
            self.stores, self.spool, models, cfg.routing or [], [d.name for d in cfg.destinations or []],
            DeviceInfo(ae_title=cfg.node.ae_title), self.audit, self.log,
            on_stage=self.metrics.observe_stage, on_tensor=self._on_tensor,
            on_error=self.metrics.observe_error, shadows=self.shadows, on_inferred=self._on_inferred,
            on_shadow=self.shadow_agreement.observe, runner=self.runner,
            model_for=self._model_for,
        )

    def _model_for(self, job_id: int) -> str | None:
        """The model an HTTP request named for this job (POST /v1/predict/{model}), else None: routing."""
        return self.http.ctx.requests.model_for(job_id) if self.http is not None else None

    def _not_ready(self) -> list[str]:
        """Why the node is not serving (GET /v1/health/ready); empty when it is."""
        reasons = [] if self.models else ["no model is being served"]
        if not self.scp.healthy():
            reasons.append("the DICOM listener is not running")
        try:
            if self.spool.free_bytes() < self.cfg.storage.min_free_bytes:
                reasons.append("free space is below storage.min_free_bytes")
        except OSError:
            reasons.append("the spool is not available")
        return reasons

    def _carried(self, carrier: str, job_id: int) -> None:
        """An instance was stored: grouping hears of it, and the worker infers it while the series arrives."""
        self.completion.carried(carrier, job_id)
        self._wake_worker.set()

    # ---- telemetry: metrics, drift, status snapshot ---------------------------------------------
    def _audited(self, event: str, **fields: Any) -> None:
        """The audit log's record(), also feeding the metrics: one stream, so the two never disagree."""
        self.audit_log.record(event, **fields)
        try:
            self.metrics.observe_event(event, fields)
        except Exception:  # metrics must never fail a store, a job or a delivery
            self.log.exception("metrics_error", audit_event=event)

    def _models_changed(self) -> None:
        """At start and after a reload: drift references and the metrics' model list follow the served set."""
        refs = {name: s.engine.package.reference for name, s in self.models.items()}
        self.drift.set_references(refs, self.cfg.drift.window, self.cfg.drift.threshold)
        self.metrics.set_models(self._model_versions())
        settings = {s.engine.package.name: ref for s in self.models.values() for ref in self.cfg.models or []
                    if _configures(ref.path, s)}
        policies = {name: Policy(s.engine.package.version, settings[name].agreement_window if name in settings else 50,
                                 settings[name].min_agreement if name in settings else 0.8)
                    for name, s in self.models.items()}
        self.agreement.set_policies(policies)
        self.shadow_agreement.configure({name: (s.engine.package.version, policies[name].window)
                                         for name, s in self.shadows.items() if name in policies})

    def _model_versions(self) -> dict[str, tuple[str, str]]:
        return {name: (s.engine.package.version, s.engine.runtime) for name, s in self.models.items()}

    def _on_tensor(self, model: str, tensor: Any) -> None:
        try:
            self.drift.observe(model, tensor)
        except Exception:  # drift is a side channel: it never fails a job
            self.log.exception("drift_error", model=model)

    def _on_inferred(self, job: Any, pkg: Any, images: int) -> None:
        """After each live inference: remember the window's drift score with this job's images in it."""
        try:
            state = next((s for s in self.drift.states() if s.model == pkg.name), None)
            self.drift_jobs.observed(job.id, pkg.name, pkg.version, images, state, self.drift.threshold)
        except Exception:  # a side channel: it never fails a job
            self.log.exception("drift_jobs_error", model=pkg.name)

    def record_feedback(self, job_id: int, agree: bool, findings: list[dict[str, Any]] | None = None,
                        comment: str | None = None, principal: str | None = None) -> int:
        """A reader's verdict on a job (POST /v1/jobs/{id}/feedback calls this); returns the feedback id.

        Raises:
            FeedbackError: kind unknown_job (404), no_result (409) or invalid (422).
        """
        return self.agreement.record_feedback(job_id, agree, findings, comment, principal)

    def _on_delivered(self, delivery: Delivery, seconds: float) -> None:
        self.metrics.observe_stage("delivery", seconds)
        received = self.stores.jobs.last_instance_at(delivery.job_id)
        if received is not None:
            self.metrics.observe_time_to_result(delivery.destination, time.time() - received)

    def _start_metrics(self) -> None:
        m = self.cfg.metrics
        if not m.enabled or m.port == 0:
            return
        try:
            self.metrics_port = self.metrics.serve(m.host, m.port)
        except OSError as exc:  # the DICOM service matters more than its metrics: say so, keep serving
            self.log.error("metrics_unavailable", host=m.host, port=m.port, error=str(exc))
            return
        self.log.info("metrics_listening", host=m.host, port=self.metrics_port)

    def _write_status(self) -> None:
        content = node_status.snapshot(
            pid=_pid(), version=__version__, started_at=self._started_at, models=self._model_versions(),
            drift=self.drift.states(), threshold=self.drift.threshold, counts=self.stores.jobs.counts(),
            metrics_port=self.metrics_port, agreement=self.agreement.states(),
            shadows={name: {**state, "runtime": self.shadows[name].engine.runtime}
                     for name, state in self.shadow_agreement.states().items() if name in self.shadows},
        )
        try:
            node_status.write(self.cfg.storage.root / node_status.FILENAME, content)
        except OSError as exc:
            self.log.warning("status_snapshot_failed", error=str(exc))

    def reload(self) -> bool:
        """SIGHUP: re-read the config and model packages; new work uses the new set.

        The job in flight finishes on the old pipeline; associations are untouched. A config or
        model that does not validate is refused and the running set keeps serving. `node` and
        `storage` settings (port, AE title, TLS, spool) take effect only at restart.
        """
        assert self.cfg.source is not None
        try:
            cfg = config_load(self.cfg.source)
        except ConfigError as exc:
            return self._reload_refused(str(exc))
        models, checks = load_models(cfg, self.audit, self.log)
        shadows = load_shadows(cfg, models, self.audit, self.log)
        failed = [c for c in checks if not c.ok]
        missing = sorted({m for r in cfg.routing or [] for m in r.model_names} - set(models))
        if failed or missing:
            return self._reload_refused(failed[0].detail if failed else f"routing: model {missing[0]!r} not served")
        if cfg.node != self.cfg.node or cfg.storage != self.cfg.storage or cfg.http != self.cfg.http:
            self.log.warning("reload_partial", detail="node, storage and http settings take effect at restart")
            cfg.node, cfg.storage, cfg.http = self.cfg.node, self.cfg.storage, self.cfg.http
        self.shadows = shadows
        self.pipeline = self._make_pipeline(cfg, models)
        self.outbox.destinations = {d.name: d for d in cfg.destinations or []}
        g = cfg.grouping
        self.completion.configure(g.quiet_window_s, g.series_timeout_s, g.aborted_timeout_s)
        self.cfg, self.models, self.model_checks = cfg, models, checks
        self._models_changed()
        self.audit("config.loaded", path=str(cfg.source), sha256=cfg.sha256, reload=True)
        self.log.info("config_reloaded", sha256=cfg.sha256, models=sorted(models))
        return True

    def _reload_refused(self, reason: str) -> bool:
        self.audit("config.reload_refused", path=str(self.cfg.source), reason=reason)
        self.log.error("config_reload_refused", reason=reason)
        return False

    def _after_commit_failed(self, exc: BaseException) -> None:
        """A job's change is committed but telling the rest of the node failed (its audit line could not
        be written): say so loudly; the job goes on."""
        self.log.error("job_state_not_recorded", error=f"{type(exc).__name__}: {exc}")

    def _on_job_state(self, job_id: int, series_uid: str, state: JobState, reason: str) -> None:
        self.audit("job.state", job=job_id, series_uid=series_uid, state=state.value, reason=reason or None)
        if self.http is not None:
            self.http.ctx.watch.changed(job_id)
        if state is JobState.READY:
            self._wake_worker.set()
        elif state is JobState.REPORTED:
            self._wake_outbox.set()

    # ---- lifecycle -----------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        """Signal handler: only sets flags; the main loop does the work."""
        self._stop.set()
        self._wake_worker.set()
        self._wake_outbox.set()
        self.completion.changed.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop()

    def start(self) -> None:
        # the GIL passes from a thread computing to one waiting after this long (5 ms by default): the
        # receiving threads wait at each system call's return while inference runs in Python beside them
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.audit_trail.start()
        self.audit("node.start", version=__version__, ae_title=self.cfg.node.ae_title,
                   port=self.cfg.node.port, pid=_pid())
        self.audit("config.loaded", path=str(self.cfg.source or ""), sha256=self.cfg.sha256)
        for problem in self.ingest.recover_orphans():
            self.audit("spool.unreadable", detail=problem)
            self.log.error("spool_unreadable", detail=problem)
        resumed = self.stores.jobs.recover()
        self.scp.start()
        for name, target in (("inference-worker", self._worker_loop), ("outbox", self._outbox_loop),
                             ("grouping", self._grouping_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._wake_worker.set()
        self._wake_outbox.set()
        self._side_channels()
        self._start_metrics()
        if self.http is not None:  # readiness includes the HTTP API: it is up before READY=1
            port = self.http.start()
            self.log.info("http_listening", host=self.cfg.http.host, port=port, tls=self.cfg.http.tls.enabled)
        self._write_status()
        self.log.info(
            "node_ready", ae_title=self.cfg.node.ae_title, host=self.cfg.node.host, port=self.scp.port,
            models=sorted(self.models), resumed_jobs=resumed,
        )
        self.notifier.ready(self._status_line())

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        self.start()
        memory.freeze_startup_objects()
        interval = self.notifier.watchdog_interval_s or 1.0
        tick = min(1.0, interval)
        last_watchdog = 0.0
        last_snapshot = time.monotonic()
        last_purge = -float("inf")
        last_trim = time.monotonic()
        while not self._stop.wait(tick):
            self._side_channels()
            if self._reload.is_set():
                self._reload.clear()
                if self.reload():  # the worker thaws and freezes again once it has let go of the old models
                    self._refreeze.set()
                    self._wake_worker.set()
                self._write_status()
            now = time.monotonic()
            if now - last_watchdog >= interval and self._healthy():
                self.notifier.watchdog()
                self.notifier.status(self._status_line())
                last_watchdog = now
            if now - last_snapshot >= node_status.INTERVAL_S:
                self._write_status()
                last_snapshot = now
            if now - last_purge >= self._purge_interval():
                # bounded steps, one per tick while there is more, so the watchdog and SIGTERM are served
                last_purge = -float("inf") if self._purge() else now
            if now - last_trim >= memory.TRIM_INTERVAL_S:
                memory.return_free_memory()
                last_trim = now
        return self.shutdown()

    def _side_channels(self) -> None:
        """Audit events left by command-line tools, and reader verdicts stored by other processes."""
        try:
            pending.drain(self.cfg.storage.root, self.audit)
            self.agreement.process_pending()
        except Exception:  # never stops the main loop; tried again next tick
            self.log.exception("side_channel_error")

    def _purge_interval(self) -> float:
        """Hourly; more often for a retention shorter than four hours (a test, a tiny appliance disk)."""
        return min(_PURGE_INTERVAL_S, max(1.0, self.cfg.storage.retention_days * retention.DAY_S / 4))

    def _purge(self) -> bool:
        """One bounded step of spool retention (storage.retention_days); True when there is more to do.
        A failure is logged and tried again at the next interval."""
        try:
            done = retention.purge(self.stores.index, self.cfg.storage.retention_days, self.audit, log=self.log)
        except Exception:
            self.log.exception("spool_purge_failed")
            return False
        if done.series:
            self.log.info("spool_purged", series=done.series, instances=done.instances, bytes=done.bytes)
        return done.more

    def _healthy(self) -> bool:
        return (self.scp.healthy() and all(t.is_alive() for t in self._threads)
                and (self.http is None or self.http.healthy()))

    def _status_line(self) -> str:
        counts = self.stores.jobs.counts()
        return (f"queue received={counts['received']} ready={counts['ready']} inferring={counts['inferring']}"
                f" reported={counts['reported']} failed={counts['failed']}")

    def shutdown(self) -> int:
        """STOPPING=1; stop accepting; let stores in flight finish; persist. Well inside systemd's 10 s."""
        deadline = time.monotonic() + _STOP_BUDGET_S
        self.notifier.stopping()
        self.log.info("node_stopping")
        self.request_stop()
        if self.http is not None:
            self.http.begin_stop()  # 503 for new requests; those in flight go on
        self._drain_associations(time.monotonic() + _DRAIN_S)
        if self.http is not None:
            self.http.stop(deadline - 2.0)
        self.scp.stop()
        while self.scp.active() and time.monotonic() < deadline - 2.0:  # connections see their sockets end
            time.sleep(0.02)
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self.metrics.close()
        if self.http is not None:
            self.http.close()
        self._write_status()
        self.audit("node.stop", pid=_pid())
        self.agreement.close()
        self.drift_jobs.close()
        self.runner.close()
        self.stores.close()
        self.audit_trail.close()
        return 0

    def _drain_associations(self, until: float) -> None:
        """Close the listening socket, then give associations in progress until `until` to finish."""
        if self.scp.server is None:
            return
        self.scp.close_listener()  # new callers are refused from here on
        while self.scp.active() and time.monotonic() < until:
            time.sleep(0.05)

    # ---- loops ---------------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        """Complete series first (their result is awaited), else infer images of series still arriving."""
        yield_to_reception()
        pipeline = self.pipeline
        while not self._stop.is_set():
            if self._refreeze.is_set():
                self._refreeze.clear()
                del pipeline  # the one a reload replaced: nothing else holds it now
                frozen, unreachable = memory.refreeze_after_reload()
                self.log.info("memory_refrozen", frozen=frozen, unreachable=unreachable)
            pipeline = self.pipeline  # a reload swaps it; this job finishes on the one it started with
            job = self.stores.jobs.claim_ready()
            if job is not None:
                try:
                    pipeline.process(job)
                except Exception:  # process() never raises by design; if it does, the worker must live on
                    self.log.exception("worker_error", job=job.id)
                continue
            self._wake_worker.clear()
            try:
                if pipeline.advance():
                    continue
            except Exception:  # streaming is an optimisation: completion infers whatever it left
                self.log.exception("stream_error")
            self._wake_worker.wait(0.02 if pipeline.deferred else 1.0)

    def _grouping_loop(self) -> None:
        """Completes series as grouping's rules make them whole (grouping/completion.py); wakes early when
        a carrier ends, so a release or a quiet window is acted on within milliseconds."""
        while not self._stop.is_set():
            try:
                _, soonest = self.completion.run_due()
            except Exception:  # a database hiccup: try again shortly, never stop grouping
                self.log.exception("grouping_error")
                soonest = None
            wait = 1.0 if soonest is None else max(0.005, min(1.0, soonest - time.time()))
            self.completion.changed.wait(wait)
            self.completion.changed.clear()

    def _outbox_loop(self) -> None:
        associations = self.outbox.associations
        try:
            while not self._stop.is_set():
                try:
                    attempted = self.outbox.run_due()
                except Exception:  # keep delivering whatever happens to one attempt
                    self.log.exception("outbox_error")
                    attempted = 0
                try:
                    associations.close_idle()
                except Exception:  # a peer gone mid-release: the association is dropped all the same
                    self.log.exception("outbox_release_error")
                if attempted:
                    continue
                next_at = self.stores.deliveries.next_at()
                wait = 1.0 if next_at is None else max(0.0, min(1.0, next_at - time.time()))
                idle_at = associations.next_idle_at()
                if idle_at is not None:
                    wait = max(0.0, min(wait, idle_at - time.monotonic()))
                self._wake_outbox.wait(wait)
                self._wake_outbox.clear()
        finally:
            associations.close_all()


def _configures(path: Path, served: Served) -> bool:
    """Whether the configured package at `path` is the one `served` stands for (itself or a kept version)."""
    try:
        return load_package(path, verify_hash=False).name == served.engine.package.name
    except ModelError:
        return False


def _pid() -> int:
    import os

    return os.getpid()
