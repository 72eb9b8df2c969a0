"""Images inferred while the series arrives give the very SR the whole-series path gives (byte for byte),
reuse their outputs when the series reopens, and read no header a second time.

In process, on the node's own spool, index, job store and ONNX Runtime: the DICOM transport is covered
by the system tests; here arrival order and the moments the worker runs are chosen by the test.
"""

from __future__ import annotations

import datetime
import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import structlog

from edge_ai import phantoms
from edge_ai.config import default_routing
from edge_ai.domain import JobState
from edge_ai.imaging import pixels
from edge_ai.inference.aggregate import ImageInfo, summarize
from edge_ai.inference.engine import Outputs
from edge_ai.inference.package import load_package
from edge_ai.models import __file__ as models_init
from edge_ai.report.sr import DeviceInfo, build_sr
from edge_ai.service import reading
from edge_ai.service.stores import Stores, open_stores
from edge_ai.service.workers import Pipeline, Served
from edge_ai.spool.ingest import Ingest, dataset_offset
from edge_ai.spool.store import Spool

ort = pytest.importorskip("onnxruntime")
from edge_ai.inference.onnxruntime import OnnxRuntimeEngine  # noqa: E402

CT_PACKAGE = Path(models_init).parent / "demo_ct"
CREATED = datetime.datetime(2026, 3, 4, 5, 6, 7)
DEVICE = DeviceInfo(ae_title="EDGE_AI")


@pytest.fixture(scope="module")
def engine() -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(load_package(CT_PACKAGE))


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ct")
    datasets, _ = phantoms.ct_case(np.random.default_rng(21), slices=40, size=128, lesion=True)
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(folder / f"{i:03d}.dcm")
        phantoms.write_dataset(ds, paths[-1])
    return paths


class Node:
    """The node's storage and worker in one process: store instances, let the worker run, complete."""

    def __init__(self, root: Path, engine: OnnxRuntimeEngine) -> None:
        self.spool = Spool(root / "spool")
        self.stores: Stores = open_stores(root)
        self.ingest = Ingest(self.spool, self.stores.db, self.stores.index, self.stores.jobs, 0)
        self.tensors = 0
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.pipeline = Pipeline(
            self.stores, self.spool, {engine.package.name: Served(engine)}, default_routing(), ["results"], DEVICE,
            lambda event, **f: self.events.append((event, f)), structlog.get_logger("test"),
            on_tensor=self._tensor, clock=lambda: CREATED)

    def _tensor(self, model: str, tensor: np.ndarray) -> None:
        self.tensors += 1

    def store(self, path: Path) -> int:
        part10 = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        stored = self.ingest.store(part10, part10[dataset_offset(part10):], str(ds.SOPClassUID), "assoc-1")
        return stored.outcome.job_id

    def complete(self, job_id: int) -> bytes:
        last = self.stores.jobs.last_instance_at(job_id)
        assert last is not None
        assert self.stores.jobs.complete([(job_id, last)], "test") == 1
        job = self.stores.jobs.claim_ready()
        assert job is not None and job.id == job_id
        self.pipeline.process(job)
        assert self.stores.jobs.state(job_id) in (JobState.DELIVERED, JobState.REPORTED)
        path = self.stores.db.rows("SELECT path FROM reports WHERE job_id=?", (job_id,))[0]["path"]
        return Path(str(path)).read_bytes()

    def close(self) -> None:
        self.pipeline.runner.close()
        self.stores.close()


def _reference_sr(paths: list[Path], engine: OnnxRuntimeEngine) -> bytes:
    """The SR as the whole-series design made it: every header read whole, images decoded by pydicom,
    inferred in slice order in full batches, aggregated, rendered."""
    pkg = engine.package
    full = [pydicom.dcmread(p) for p in paths]
    order = sorted(range(len(full)),
                   key=lambda i: (float(full[i].ImagePositionPatient[2]), int(full[i].InstanceNumber)))
    tensors = [pixels.preprocess(full[i], pkg.preprocessing) for i in order]
    size = max(pkg.batch_sizes)
    probs, boxes = [], []
    for start in range(0, len(tensors), size):
        chunk = tensors[start:start + size]
        out = engine.run(pixels.stack(chunk, size))
        probs.append(out.probability[:len(chunk)])
        boxes.append(out.box[:len(chunk)])
    infos = [ImageInfo(str(d.SOPInstanceUID), str(d.SOPClassUID), int(d.Rows), int(d.Columns))
             for d in (full[i] for i in order)]
    result = summarize(pkg, engine.runtime, infos, Outputs(np.concatenate(probs), np.concatenate(boxes)))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    buffer = io.BytesIO()
    build_sr(headers, result, pkg, DEVICE, created=CREATED).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_sr_made_while_arriving_is_byte_identical_to_whole_series(
        series: list[Path], engine: OnnxRuntimeEngine, tmp_path: Path) -> None:
    """A CT inferred slice batch by slice batch as it arrives, out of order, gets the very SR (same bytes,
    same UID) as the same CT inferred all at completion, and as one built from every header read whole."""
    whole = Node(tmp_path / "whole", engine)
    try:
        job = 0
        for path in series:
            job = whole.store(path)
        key = (engine.package.name, engine.package.version)
        assert whole.stores.outputs.pending(1, key, ("1.2.840.10008.5.1.4.1.1.2",), 100)  # nothing inferred yet
        whole_sr = whole.complete(job)
    finally:
        whole.close()

    streamed = Node(tmp_path / "streamed", engine)
    try:
        order = np.random.default_rng(2).permutation(len(series))
        for k, i in enumerate(order):
            job = streamed.store(series[i])
            if k % 5 == 4:
                while streamed.pipeline.advance(settle_s=0):
                    pass
        assert streamed.tensors >= 35  # inferred while arriving: completion had at most the last few left
        before = streamed.tensors
        streamed_sr = streamed.complete(job)
        assert streamed.tensors - before <= 5
        assert streamed.tensors == len(series)  # the drift monitor saw each image once
    finally:
        streamed.close()
    assert streamed_sr == whole_sr
    assert whole_sr == _reference_sr(series, engine)


def test_reopened_series_reuses_outputs_and_names_predecessor(
        series: list[Path], engine: OnnxRuntimeEngine, tmp_path: Path) -> None:
    """An instance arriving after the SR reopens the series: only that image is inferred again, and the
    new SR (new UID) lists the earlier one as its predecessor."""
    node = Node(tmp_path / "n", engine)
    try:
        job = 0
        for path in series[:-1]:
            job = node.store(path)
        first = pydicom.dcmread(io.BytesIO(node.complete(job)))
        seen = node.tensors
        job2 = node.store(series[-1])
        assert job2 != job
        while node.pipeline.advance(settle_s=0):
            pass
        second = pydicom.dcmread(io.BytesIO(node.complete(job2)))
        assert node.tensors == seen + 1
        assert second.SOPInstanceUID != first.SOPInstanceUID
        pred = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert pred.ReferencedSOPInstanceUID == first.SOPInstanceUID
    finally:
        node.close()


def test_worker_reads_the_index_not_the_headers(series: list[Path], engine: OnnxRuntimeEngine, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordering and preprocessing come from what ingest recorded: at completion of a 40-slice CT the only
    headers read are routing's first instance and the SR's first instance."""
    node = Node(tmp_path / "n", engine)
    reads: list[str] = []
    original = reading.read_header

    def counting(ref: Any, keep: Any = None) -> Any:
        reads.append(ref.sop_instance_uid)
        return original(ref, keep)

    monkeypatch.setattr(reading, "read_header", counting)
    try:
        job = 0
        for path in series:
            job = node.store(path)
        node.complete(job)
    finally:
        node.close()
    assert len(reads) == 2


def test_worker_behind_reception_takes_bounded_steps_from_the_index(
        series: list[Path], engine: OnnxRuntimeEngine, tmp_path: Path) -> None:
    """Reception does not wait for inference: 40 slices are stored with the worker idle, the work is what
    the index holds, and each step takes at most a few batches of it, never the whole series at once."""
    from edge_ai.service.workers import STEP_BATCHES

    node = Node(tmp_path / "n", engine)
    try:
        for path in series:
            node.store(path)
        key = (engine.package.name, engine.package.version)
        classes = ("1.2.840.10008.5.1.4.1.1.2",)
        assert len(node.stores.outputs.pending(1, key, classes, 1000)) == len(series)
        step = max(engine.package.batch_sizes) * STEP_BATCHES
        steps = 0
        while node.pipeline.advance(settle_s=0):
            steps += 1
            done = len(series) - len(node.stores.outputs.pending(1, key, classes, 1000))
            assert done <= steps * step
        assert steps >= 1 and node.tensors == len(series)
    finally:
        node.close()


def test_routing_changed_by_a_reload_is_applied_to_a_series_still_arriving(
        series: list[Path], engine: OnnxRuntimeEngine, tmp_path: Path) -> None:
    """A series routed to the CT model while arriving, whose rule a reload then removes, is not analysed:
    the job's stored routing is made again under the new config."""
    from edge_ai.config import Route, RouteMatch

    node = Node(tmp_path / "n", engine)
    try:
        job = 0
        for path in series[:20]:
            job = node.store(path)
        while node.pipeline.advance(settle_s=0):
            pass
        assert node.tensors > 0
        old = node.pipeline
        node.pipeline = Pipeline(
            node.stores, node.spool, old.models, [Route(name="dx", match=RouteMatch(Modality=["DX"]),
                                                        model=engine.package.name)], ["results"], DEVICE,
            old.audit, old.log, clock=lambda: CREATED, runner=old.runner)
        last = node.stores.jobs.last_instance_at(job)
        assert last is not None and node.stores.jobs.complete([(job, last)], "test") == 1
        claimed = node.stores.jobs.claim_ready()
        assert claimed is not None
        node.pipeline.process(claimed)
        assert [e for e, _ in node.events if e == "series.not_routed"]
        assert node.stores.db.rows("SELECT COUNT(*) AS n FROM reports WHERE job_id=?", (job,))[0]["n"] == 0
    finally:
        node.close()


def test_shadow_version_runs_beside_while_arriving_and_drift_sees_each_image_once(
        series: list[Path], engine: OnnxRuntimeEngine, tmp_path: Path) -> None:
    """A shadow version taking the same input runs on the very tensors streamed for the live one: its
    result is audited (agreeing here), never reported, and the drift monitor sees each image once."""
    shadow_pkg = engine.package.model_copy(update={"version": "1.0.1-shadow"})
    shadow = OnnxRuntimeEngine(shadow_pkg)
    node = Node(tmp_path / "n", engine)
    node.pipeline.shadows = {engine.package.name: Served(shadow)}
    try:
        job = 0
        for k, path in enumerate(series):
            job = node.store(path)
            if k % 8 == 7:
                while node.pipeline.advance(settle_s=0):
                    pass
        node.complete(job)
        audits = [f for e, f in node.events if e == "shadow.inference"]
        assert len(audits) == 1 and audits[0]["shared_tensors"] is True and audits[0]["agree"] is True
        assert audits[0]["version"] == "1.0.1-shadow"
        assert node.tensors == len(series)
        assert len(node.stores.db.rows("SELECT id FROM reports WHERE job_id=?", (job,))) == 1
    finally:
        node.close()
