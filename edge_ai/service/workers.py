"""The inference pipeline: while a series arrives its images are inferred a few batches at a time
(`advance`), their outputs kept in the job store; when it is complete (`process`) whatever is left is
inferred, the outputs aggregated and the SR written to the spool."""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_ai.config import Route
from edge_ai.dicom.contexts import ANALYSED
from edge_ai.domain import InferenceResult, InstanceRef, Job
from edge_ai.errors import EdgeAIError, ImagingError, ModelError
from edge_ai.grouping.jobs import InvalidTransition, ReportRow
from edge_ai.grouping.routing import RouteDecision, route
from edge_ai.inference.aggregate import Images, conclude
from edge_ai.inference.engine import Engine, Outputs
from edge_ai.inference.package import ModelPackage
from edge_ai.inference.threads import limit_blas_threads
from edge_ai.report import result_json
from edge_ai.report.sr import DeviceInfo, Predecessor, warm_up
from edge_ai.service import evidence, reading
from edge_ai.service.inferring import Runner, key_of
from edge_ai.service.shadow import same_input
from edge_ai.service.stores import Stores
from edge_ai.spool.index import Kept
from edge_ai.spool.store import Spool

Audit = Callable[..., None]

SETTLE_S = 0.05  # a series arriving waits this long for a full batch before a partial one is inferred
STEP_BATCHES = 4  # batches per streaming step: a series that completes meanwhile waits at most this long
COMPLETION_CHUNK = 256  # instances read per round at completion: memory bounded whatever the series size
_ANALYSED = tuple(sorted(ANALYSED))


@dataclass(frozen=True)
class Served:
    """A model that passed its hash check and self-test, with the engine that serves it."""

    engine: Engine

    @property
    def name(self) -> str:
        return self.engine.package.name


class Pipeline:
    def __init__(
        self,
        stores: Stores,
        spool: Spool,
        models: dict[str, Served],
        routes: list[Route],
        destinations: list[str],
        device: DeviceInfo,
        audit: Audit,
        log: Any,
        on_stage: Callable[[str, float], None] = lambda stage, seconds: None,
        on_tensor: Callable[[str, np.ndarray], None] = lambda model, tensor: None,
        on_error: Callable[[str, str], None] = lambda stage, kind: None,
        shadows: dict[str, Served] | None = None,
        on_inferred: Callable[[Job, ModelPackage, int], None] = lambda job, pkg, images: None,
        on_shadow: Callable[[str, bool], None] = lambda model, agree: None,
        model_for: Callable[[int], str | None] = lambda job_id: None,
        clock: Callable[[], datetime.datetime] = datetime.datetime.now,
        runner: Runner | None = None,
    ) -> None:
        self.stores = stores
        self.spool = spool
        self.models = models
        self.routes = routes
        self.destinations = destinations
        self.device = device
        self.audit = audit
        self.log = log
        self.on_stage = on_stage
        self.on_tensor = on_tensor  # every preprocessed image, for the drift monitor
        self.on_error = on_error  # (stage, kind) of every failed job, for the metrics
        self.shadows = shadows or {}  # live model name -> its shadow version: run, audited, never delivered
        self.on_inferred = on_inferred  # (job, package, images) after each live inference: per-job drift
        self.on_shadow = on_shadow  # (model, shadow agreed with live) for the shadow agreement metric
        self.model_for = model_for  # a model the job's sender named (HTTP API), instead of routing
        self.clock = clock  # the SR's content date and time
        self.routing = hashlib.sha256(repr((routes, destinations)).encode()).hexdigest()
        self.runner = runner or Runner(stores.outputs, on_tensor)
        self.deferred = False  # advance() left a series to fill a batch: look again soon
        # (job, model, version) -> the last instance row streamed: each step reads only later arrivals;
        # anything passed over (e.g. after a restart) is inferred at completion, which reads them all
        self._seen: dict[tuple[int, str, str], int] = {}
        limit_blas_threads(1)  # numpy's resize products: 8-10 ms -> 1.1 ms per CT slice (inference/threads.py)
        warm_up()  # highdicom's IOD tables: loaded at start, not in the first job's time-to-result

    def process(self, job: Job) -> None:
        """Run one claimed job to `reported` (or `failed` with a reason); never raises."""
        try:
            self._process(job)
        except EdgeAIError as exc:
            self.on_error(_stage_of(exc), type(exc).__name__)
            self._fail(job, str(exc))
        except Exception as exc:  # the boundary: a bug or bad data fails this job, not the node
            self.log.exception("job_error", job=job.id)
            self.on_error("pipeline", "internal")
            self._fail(job, f"internal error: {type(exc).__name__}: {exc}")

    def _fail(self, job: Job, reason: str) -> None:
        self.log.warning("job_failed", job=job.id, reason=reason)
        try:
            self.stores.jobs.fail(job.id, reason)
        except InvalidTransition:  # it moved on before the error (reported, say): that state stands
            self.log.error("job_fail_refused", job=job.id, state=str(self.stores.jobs.state(job.id)))

    # ---- while the series arrives ------------------------------------------------------------------
    def advance(self, settle_s: float = SETTLE_S) -> bool:
        """Infer a step (a few batches) of the images of series still arriving; True when it did work.

        Reception never waits on this: the work is what the index holds and no output yet, so a worker
        that falls behind only leaves more of it for the next step or for completion. A series with
        less than a batch pending is left for `settle_s` after its last instance, for the batch to
        fill (`deferred` says so, and the caller looks again soon).
        """
        self.deferred = False
        receiving = self.stores.outputs.receiving_jobs()
        if len(self._seen) > 4 * len(receiving) + 64:  # forget jobs that moved on: bounded whatever the uptime
            live = {job for job, _, _ in receiving}
            self._seen = {k: v for k, v in self._seen.items() if k[0] in live}
        for job_id, series_id, last in receiving:
            try:
                if self._advance_job(job_id, series_id, last, settle_s):
                    return True
            except Exception as exc:  # reading the first header failed, a database hiccup...: completion says
                self.log.warning("stream_step_failed", job=job_id, error=f"{type(exc).__name__}: {exc}")
        return False

    def _advance_job(self, job_id: int, series_id: int, last: float, settle_s: float) -> bool:
        decisions = self._decisions(job_id, series_id)
        for decision in decisions or ():
            served = self.models.get(decision.model)
            if served is None:
                continue
            shadow = self.shadows.get(served.name)
            beside = shadow.engine if shadow is not None and same_input(shadow.engine.package,
                                                                       served.engine.package) else None
            steps = [(served.engine, True, beside)]
            if shadow is not None and beside is None:
                steps.append((shadow.engine, False, None))
            for engine, observe, companion in steps:
                batch = max(engine.package.batch_sizes)
                seen = (job_id, *key_of(engine))
                pending = self.stores.outputs.pending(series_id, key_of(engine), _ANALYSED, batch * STEP_BATCHES,
                                                      after=self._seen.get(seen, 0))
                if not pending:
                    continue
                if len(pending) < batch and time.time() - last < settle_s:
                    self.deferred = True
                    continue
                self._seen[seen] = pending[-1].instance_id
                self.runner.run(engine, self._units(pending), observe=observe, strict=False, beside=companion)
                return True
        return False

    def _units(self, kept: list[Kept]) -> list[reading.Unit]:
        metas: reading.Metas = {}
        return reading.units([reading.source(k, metas) for k in kept])

    def _decisions(self, job_id: int, series_id: int) -> list[RouteDecision] | None:
        """The job's routing: rules applied once to its series' first analysed instance (the one header
        read whole for it), kept in the job store; made again when the routing config changed. None:
        nothing analysed has arrived yet. A model the sender named (POST /v1/predict/{model}) replaces
        routing for its job."""
        named = self.model_for(job_id)
        if named:
            return [RouteDecision("request", named, tuple(self.destinations))]
        stored = self.stores.outputs.route_of(job_id, self.routing)
        if stored is not None:
            return [RouteDecision(d[0], d[1], tuple(d[2:])) for d in stored]
        first = self.stores.index.first_instance(series_id, _ANALYSED)
        if first is None:
            return None
        header, _ = reading.read_header(first)
        decisions = route(self.routes, header, self.destinations)
        self.stores.outputs.set_route(job_id, self.routing, [[d.route, d.model, *d.destinations] for d in decisions])
        return decisions

    # ---- when the series is complete ----------------------------------------------------------------
    def _process(self, job: Job) -> None:
        # counted, not read: no row per instance is held at completion (memory flat in the series' size)
        stored, count, first_class = self.stores.index.census(job.series_id, _ANALYSED)
        if stored and not count:  # MR, RT, dose reports, presentation states...: kept, audited, not analysed
            self.audit("series.not_analysed", job=job.id, series_uid=job.series_uid, modality=job.modality,
                       sop_class_uid=first_class)
            self.stores.deliveries.report(job.id, [], [])
            return
        if job.generation > 1 and self.stores.index.series_was_purged(job.series_id):
            # a result on the few instances still kept would supersede the whole series' result in PACS
            raise ImagingError("earlier instances of this series were deleted by storage.retention_days, "
                               "so it cannot be re-analysed as a whole; the earlier result stands")
        if not count:
            raise ImagingError("series has no stored instances")
        decisions = self._decisions(job.id, job.series_id) or []
        if not decisions:
            header, _ = reading.read_header(self.stores.index.first_instance(job.series_id, _ANALYSED) or _none())
            self.audit("series.not_routed", job=job.id, series_uid=job.series_uid, modality=job.modality,
                       sop_class_uid=str(header.get("SOPClassUID", "")))
            self.stores.deliveries.report(job.id, [], [])
            return
        rows, dests = [], []
        for decision in decisions:
            rows.append(self._run_model(job, decision, count))
            dests.append(list(decision.destinations))
        self.stores.deliveries.report(job.id, rows, dests)
        self.stores.outputs.drop_route(job.id)

    def _complete(self, engine: Engine, series_id: int, observe: bool, beside: Engine | None) -> Exception | None:
        """Infer every image of the series `engine` has no output for yet (those that failed while
        arriving too), strictly; returns the shadow's error, if any."""
        outputs, key = self.stores.outputs, key_of(engine)
        outputs.forget_errors(series_id, key)
        shadow_error = None
        while pending := outputs.pending(series_id, key, _ANALYSED, COMPLETION_CHUNK):
            error = self.runner.run(engine, self._units(pending), observe=observe, strict=True, beside=beside)
            shadow_error = shadow_error or error
            if outputs.pending(series_id, key, _ANALYSED, 1) == pending[:1]:
                raise ImagingError(f"instance {pending[0].ref.sop_instance_uid}: no output was recorded")
        return shadow_error

    def _result(self, engine: Engine, series_id: int) -> tuple[InferenceResult, float]:
        """The series' result from the outputs in the job store, and the seconds its images took."""
        got = self.stores.outputs.gather(series_id, key_of(engine), _ANALYSED)
        if got.errors:
            raise ImagingError(got.errors[0])
        if not got.sop_instance_uids:
            raise ImagingError("no instance of this series can be inferred (e.g. only Secondary Capture)")
        images = Images(got.sop_instance_uids, got.sop_class_uids, got.rows, got.columns, got.frame_numbers)
        return conclude(engine.package, engine.runtime, images, Outputs(got.probability, got.box)), got.seconds

    def _run_model(self, job: Job, decision: RouteDecision, instances: int) -> ReportRow:
        served = self.models.get(decision.model)
        if served is None:
            raise ModelError(f"route {decision.route}: model {decision.model} is not being served")
        engine = served.engine
        pkg = engine.package
        started = time.monotonic()
        shadow = self.shadows.get(pkg.name)
        beside = shadow.engine if shadow is not None and same_input(shadow.engine.package, pkg) else None
        shadow_error = self._complete(engine, job.series_id, True, beside)
        result, seconds = self._result(engine, job.series_id)
        self.on_stage("inference", seconds)
        self.audit(
            "inference", job=job.id, series_uid=job.series_uid, model=pkg.name, version=pkg.version,
            runtime=engine.runtime, instances=instances, images=result.images, duration_s=round(seconds, 4),
            at_completion_s=round(time.monotonic() - started, 4),
            outcome="positive" if result.positive else "negative", probability=round(result.probability, 4),
        )
        self.on_inferred(job, pkg, result.images)
        if shadow is not None:
            self._run_shadow(job, shadow, instances, result, beside is not None, shadow_error)
        return self._report(job, pkg, engine.runtime, result)

    def _report(self, job: Job, pkg: ModelPackage, runtime: str, result: InferenceResult) -> ReportRow:
        previous = self.stores.jobs.previous_report(job.series_id, pkg.name, job.id)
        predecessor = (
            Predecessor(sop_instance_uid=previous[0], series_instance_uid=previous[1],
                        study_instance_uid=job.study_uid)
            if previous else None
        )
        started = time.monotonic()
        sources = evidence.sources(self.stores.index, job.series_id, job.series_uid, _ANALYSED,
                                   {f.sop_instance_uid for f in result.findings})
        sr, data = evidence.render(sources, result, pkg, device=self.device, predecessor=predecessor,
                                   created=self.clock())
        del sources
        path = self.spool.report_path(str(sr.SOPInstanceUID))
        self.spool.write(path, data)
        self.on_stage("report", time.monotonic() - started)
        self.audit(
            "sr.created", job=job.id, series_uid=job.series_uid, model=pkg.name, version=pkg.version,
            sr_sop_instance_uid=str(sr.SOPInstanceUID), sr_series_uid=str(sr.SeriesInstanceUID),
            study_uid=job.study_uid, patient_id=str(sr.get("PatientID", "")) or None,
            predecessor=predecessor.sop_instance_uid if predecessor else None, findings=len(result.findings),
        )
        rendered = result_json.render(result, pkg, pkg.sha256, str(sr.SOPInstanceUID))  # same result as the SR
        return ReportRow(
            model_name=pkg.name, model_version=pkg.version, runtime=runtime,
            sop_instance_uid=str(sr.SOPInstanceUID), series_uid=str(sr.SeriesInstanceUID),
            path=str(path), positive=result.positive, probability=result.probability,
            result_json=json.dumps(rendered, separators=(",", ":")),
        )

    def _run_shadow(self, job: Job, shadow: Served, instances: int, live: InferenceResult, shared: bool,
                    error: Exception | None) -> None:
        """The shadow version's result on the same images: inferred beside the live one on its very
        tensors where both take the same input (`shared`), else by its own preprocessing (never fed to
        the drift monitor). Audited and compared with the live one, never reported."""
        pkg = shadow.engine.package
        started = time.monotonic()
        fields: dict[str, Any] = {"job": job.id, "series_uid": job.series_uid, "model": pkg.name,
                                  "version": pkg.version, "live_version": live.model_version,
                                  "runtime": shadow.engine.runtime, "instances": instances,
                                  "live_outcome": "positive" if live.positive else "negative",
                                  "live_probability": round(live.probability, 4), "shared_tensors": shared}
        try:
            if error is not None:
                raise error
            self._complete(shadow.engine, job.series_id, False, None)
            result, seconds = self._result(shadow.engine, job.series_id)
        except Exception as exc:  # a shadow never fails the live job
            self.audit("shadow.inference", **fields, outcome="error", reason=f"{type(exc).__name__}: {exc}",
                       duration_s=round(time.monotonic() - started, 4))
            return
        agree = result.positive == live.positive
        self.audit("shadow.inference", **fields, outcome="positive" if result.positive else "negative",
                   probability=round(result.probability, 4), agree=agree, duration_s=round(seconds, 4))
        self.on_shadow(pkg.name, agree)


def _none() -> InstanceRef:
    raise ImagingError("series has no stored instances")


def _stage_of(exc: EdgeAIError) -> str:
    """The pipeline stage an error belongs to, as the metrics label it."""
    if isinstance(exc, ImagingError):
        return "imaging"
    if isinstance(exc, ModelError):
        return "inference"
    return "pipeline"
