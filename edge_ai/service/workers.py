"""The inference pipeline for one job: headers -> routing -> imaging -> engine -> SR in the spool."""

from __future__ import annotations

import io
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import UID

from edge_ai.config import Route
from edge_ai.dicom.contexts import ANALYSED
from edge_ai.domain import InferenceResult, InstanceRef, Job
from edge_ai.errors import EdgeAIError, ImagingError, ModelError
from edge_ai.grouping.jobs import InvalidTransition, ReportRow
from edge_ai.grouping.routing import RouteDecision, route
from edge_ai.imaging import frames, pixels
from edge_ai.inference.aggregate import ImageInfo, summarize
from edge_ai.inference.engine import Engine, Outputs
from edge_ai.inference.package import ModelPackage
from edge_ai.inference.threads import limit_blas_threads
from edge_ai.report import result_json
from edge_ai.report.sr import DeviceInfo, Predecessor, build_sr, warm_up
from edge_ai.service import reading
from edge_ai.service.shadow import Beside, same_input
from edge_ai.service.stores import Stores
from edge_ai.spool.store import Spool

Audit = Callable[..., None]

IMAGING_THREADS = 2  # preprocessing threads beside the engine; CT 300 in-process 4.0 -> 3.0 ms/slice on 2 cores
PREFETCH_BATCHES = 2  # batches preprocessed ahead of the one the engine runs (1: 3.1, 2: 3.0, 4: 3.1 ms/slice)


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

    def _process(self, job: Job) -> None:
        stored = self.stores.index.series_instances(job.series_id)
        refs = [r for r in stored if r.sop_class_uid in ANALYSED]
        if stored and not refs:  # MR, RT, dose reports, presentation states...: kept, audited, not analysed
            self.audit("series.not_analysed", job=job.id, series_uid=job.series_uid, modality=job.modality,
                       sop_class_uid=stored[0].sop_class_uid)
            self.stores.deliveries.report(job.id, [], [])
            return
        if job.generation > 1 and self.stores.index.series_was_purged(job.series_id):
            # a result on the few instances still kept would supersede the whole series' result in PACS
            raise ImagingError("earlier instances of this series were deleted by storage.retention_days, "
                               "so it cannot be re-analysed as a whole; the earlier result stands")
        if not refs:
            raise ImagingError("series has no stored instances")
        headers, offsets = _read_headers(refs)
        named = self.model_for(job.id)
        decisions = ([RouteDecision("request", named, tuple(self.destinations))] if named
                     else route(self.routes, headers[0], self.destinations))
        if not decisions:
            self.audit("series.not_routed", job=job.id, series_uid=job.series_uid, modality=job.modality,
                       sop_class_uid=str(headers[0].get("SOPClassUID", "")))
            self.stores.deliveries.report(job.id, [], [])
            return
        rows, dests = [], []
        for decision in decisions:
            rows.append(self._run_model(job, decision, refs, headers, offsets))
            dests.append(list(decision.destinations))
        self.stores.deliveries.report(job.id, rows, dests)

    def _run_model(
        self, job: Job, decision: RouteDecision, refs: list[InstanceRef], headers: list[Dataset],
        offsets: list[int | None],
    ) -> ReportRow:
        served = self.models.get(decision.model)
        if served is None:
            raise ModelError(f"route {decision.route}: model {decision.model} is not being served")
        engine = served.engine
        pkg = engine.package
        started = time.monotonic()
        pairs = [
            reading.Source(r, h, o) for r, h, o in zip(refs, headers, offsets, strict=True)
            if str(h.SOPClassUID) in ANALYSED
        ]
        units = reading.units(pairs)
        shadow = self.shadows.get(pkg.name)
        beside = Beside(shadow.engine) if shadow is not None and same_input(shadow.engine.package, pkg) else None
        result = self._infer(engine, units, beside=beside)
        duration = time.monotonic() - started - (beside.seconds if beside is not None else 0.0)
        self.on_stage("inference", duration)
        self.audit(
            "inference", job=job.id, series_uid=job.series_uid, model=pkg.name, version=pkg.version,
            runtime=engine.runtime, instances=len(pairs), images=len(result.scores), duration_s=round(duration, 4),
            outcome="positive" if result.positive else "negative", probability=round(result.probability, 4),
        )
        self.on_inferred(job, pkg, len(result.scores))
        if shadow is not None:
            self._run_shadow(job, shadow, units, result, beside)
        previous = self.stores.jobs.previous_report(job.series_id, pkg.name, job.id)
        predecessor = (
            Predecessor(sop_instance_uid=previous[0], series_instance_uid=previous[1],
                        study_instance_uid=job.study_uid)
            if previous else None
        )
        started = time.monotonic()
        sr = build_sr(headers, result, pkg, self.device, predecessor=predecessor)
        path = self.spool.report_path(str(sr.SOPInstanceUID))
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        self.spool.write(path, buffer.getvalue())
        self.on_stage("report", time.monotonic() - started)
        self.audit(
            "sr.created", job=job.id, series_uid=job.series_uid, model=pkg.name, version=pkg.version,
            sr_sop_instance_uid=str(sr.SOPInstanceUID), sr_series_uid=str(sr.SeriesInstanceUID),
            study_uid=job.study_uid, patient_id=str(sr.get("PatientID", "")) or None,
            predecessor=predecessor.sop_instance_uid if predecessor else None, findings=len(result.findings),
        )
        rendered = result_json.render(result, pkg, pkg.sha256, str(sr.SOPInstanceUID))  # same result as the SR
        return ReportRow(
            model_name=pkg.name, model_version=pkg.version, runtime=engine.runtime,
            sop_instance_uid=str(sr.SOPInstanceUID), series_uid=str(sr.SeriesInstanceUID),
            path=str(path), positive=result.positive, probability=result.probability,
            result_json=json.dumps(rendered, separators=(",", ":")),
        )

    def _run_shadow(self, job: Job, shadow: Served, pairs: Sequence[reading.Unit], live: InferenceResult,
                    beside: Beside | None) -> None:
        """The shadow version on the same instances: on the live run's own tensors where both take the
        same input (`beside`), else re-read and preprocessed by its own spec (never fed to the drift
        monitor). Its result is audited and compared with the live one, never reported."""
        pkg = shadow.engine.package
        started = time.monotonic() - (beside.seconds if beside is not None else 0.0)
        fields: dict[str, Any] = {"job": job.id, "series_uid": job.series_uid, "model": pkg.name,
                                  "version": pkg.version, "live_version": live.model_version,
                                  "runtime": shadow.engine.runtime, "instances": len(pairs),
                                  "live_outcome": "positive" if live.positive else "negative",
                                  "live_probability": round(live.probability, 4)}
        fields["shared_tensors"] = beside is not None
        try:
            result = beside.result() if beside is not None else self._infer(shadow.engine, pairs, observe=False)
        except Exception as exc:  # a shadow never fails the live job
            self.audit("shadow.inference", **fields, outcome="error", reason=f"{type(exc).__name__}: {exc}",
                       duration_s=round(time.monotonic() - started, 4))
            return
        agree = result.positive == live.positive
        self.audit("shadow.inference", **fields, outcome="positive" if result.positive else "negative",
                   probability=round(result.probability, 4), agree=agree,
                   duration_s=round(time.monotonic() - started, 4))
        self.on_shadow(pkg.name, agree)

    def _infer(self, engine: Engine, pairs: Sequence[reading.Unit], observe: bool = True,
               beside: Beside | None = None) -> InferenceResult:
        """Every image (a single-frame instance or one frame of a multi-frame one) through the model,
        in `reading.units` order; the aggregate sees frames as it sees slices. `observe`: feed the drift
        monitor; `beside`: the shadow version runs on the same batches."""
        pkg = engine.package
        if not pairs:
            raise ImagingError("no instance of this series can be inferred (e.g. only Secondary Capture)")
        batch_size = max(pkg.batch_sizes)
        infos = [ImageInfo(p.source.ref.sop_instance_uid, p.source.ref.sop_class_uid, int(p.source.header.Rows),
                           int(p.source.header.Columns), p.frame.number) for p in pairs]
        probs, boxes = [], []
        started = time.monotonic()
        batches = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
        if beside is not None:
            beside.infos = infos
        # Preprocessing runs on IMAGING_THREADS threads, at most the next PREFETCH_BATCHES batches ahead
        # of the engine, so memory stays flat whatever the series size. It is numpy and file reads on
        # the native path, which release the GIL (pydicom's decoder, which holds it, is the exception).
        with ThreadPoolExecutor(IMAGING_THREADS, thread_name_prefix="imaging") as pool:
            pending: deque[list[Future[np.ndarray]]] = deque()
            for index, batch_sources in enumerate(batches):
                while len(pending) <= PREFETCH_BATCHES and index + len(pending) < len(batches):
                    ahead = batches[index + len(pending)]
                    # frame headers are made here, on this thread: imaging threads only read them
                    pending.append([pool.submit(reading.tensor, p, frames.frame_header(p.source.header, p.frame),
                                                pkg.preprocessing) for p in ahead])
                batch = [f.result() for f in pending.popleft()]
                for tensor in batch if observe else ():
                    self.on_tensor(pkg.name, tensor)
                stacked = pixels.stack(batch, _padded_size(pkg.batch_sizes, len(batch)))
                out = engine.run(stacked)
                if beside is not None:
                    beside.run(stacked, len(batch_sources))
                probs.append(out.probability[: len(batch_sources)])
                boxes.append(out.box[: len(batch_sources)])
        self.on_stage("imaging+inference", time.monotonic() - started)
        return summarize(pkg, engine.runtime, infos, Outputs(np.concatenate(probs), np.concatenate(boxes)))


def _stage_of(exc: EdgeAIError) -> str:
    """The pipeline stage an error belongs to, as the metrics label it."""
    if isinstance(exc, ImagingError):
        return "imaging"
    if isinstance(exc, ModelError):
        return "inference"
    return "pipeline"


def _padded_size(sizes: list[int], n: int) -> int:
    """The smallest batch size the package declares that holds n (the runtime may need exact sizes)."""
    fitting = [s for s in sorted(sizes) if s >= n]
    return fitting[0] if fitting else n


# What the worker and the SR need of every instance but two (see _read_headers); a full header is
# ~25 KB of Python objects, so keeping them all made the node's RSS grow ~50 MB per 2000 slices.
_SLIM_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",  # identity, evidence
    "InstanceNumber", "ImagePositionPatient",  # slice and evidence order
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames",  # pixel module
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",  # LUT, VOI window
)
# Headers with these keep everything: their LUT/VOI/frame handling reads more than the list above
_FULL_IF_PRESENT = ("ModalityLUTSequence", "VOILUTSequence", "SharedFunctionalGroupsSequence",
                    "PerFrameFunctionalGroupsSequence")


_SLIM_TAGS = tuple(Tag(k) for k in _SLIM_KEYWORDS)
_FULL_IF_TAGS = tuple(Tag(k) for k in _FULL_IF_PRESENT)


def _slim(header: Dataset, metas: dict[str, FileMetaDataset]) -> Dataset:
    """The elements of `header` in _SLIM_KEYWORDS (copied as read, not converted) and its transfer
    syntax, in a File Meta shared by all headers of that syntax (`metas`, never modified)."""
    if any(tag in header for tag in _FULL_IF_TAGS):
        return header
    slim = Dataset()
    for tag in _SLIM_TAGS:
        element = header.get_item(tag)
        if element is not None:
            slim[tag] = element
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in metas:
        metas[syntax] = FileMetaDataset()
        if syntax:
            metas[syntax].TransferSyntaxUID = UID(syntax)
    slim.file_meta = metas[syntax]
    return slim


def _evidence_order(ds: Dataset) -> tuple[int, str]:
    """build_sr's evidence order: the first of it gives the SR its patient/study attributes."""
    return (int(ds.get("InstanceNumber") or 0), str(ds.SOPInstanceUID))


def _read_headers(refs: Sequence[InstanceRef]) -> tuple[list[Dataset], list[int | None]]:
    """Every instance's header and Pixel Data offset, memory bounded by the series' size in slim headers.

    Two headers stay whole: the first in arrival order (routing reads it) and the first in
    `_evidence_order` (the SR copies patient, study and equipment attributes from it). The rest
    keep `_SLIM_KEYWORDS`: what ordering, preprocessing and the SR's evidence list read.
    """
    headers: list[Dataset] = []
    offsets: list[int | None] = []
    best: tuple[tuple[int, str], int] | None = None
    metas: dict[str, FileMetaDataset] = {}
    for index, ref in enumerate(refs):
        header, offset = _read_header(ref)
        offsets.append(offset)
        key = _evidence_order(header)
        if best is None or key < best[0]:
            if best is not None and best[1] != 0:
                headers[best[1]] = _slim(headers[best[1]], metas)
            best = (key, index)
            headers.append(header)
        else:
            headers.append(header if index == 0 else _slim(header, metas))
    return headers, offsets


def _read_header(ref: InstanceRef) -> tuple[Dataset, int | None]:
    """The header (no pixel data) and the file offset where it stopped: the pixel data element."""
    try:
        with Path(ref.path).open("rb") as fp:
            header = pydicom.dcmread(fp, stop_before_pixels=True)
            return header, fp.tell()
    except Exception as exc:  # a stored file that no longer parses fails its job with the reason
        raise ImagingError(f"instance {ref.sop_instance_uid}: cannot read header: {type(exc).__name__}") from exc

