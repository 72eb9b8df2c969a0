"""The worker keeps slim headers for most of a series: same routing, ordering and SR, bounded memory."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import numpy as np
import pydicom

from edge_ai import phantoms
from edge_ai.domain import Box, Finding, InferenceResult, InstanceRef
from edge_ai.imaging import frames
from edge_ai.inference.package import load_package
from edge_ai.models import __file__ as models_init
from edge_ai.report.sr import DeviceInfo, build_sr
from edge_ai.service import workers

CT_PACKAGE = Path(models_init).parent / "demo_ct"


def _series(tmp_path: Path) -> list[InstanceRef]:
    datasets, _ = phantoms.ct_case(np.random.default_rng(4), slices=6, size=32, lesion=True)
    refs = []
    # arrival order differs from instance order: the evidence-first header is not the first to arrive
    for i in (3, 0, 5, 1, 4, 2):
        ds = datasets[i]
        path = tmp_path / f"{i}.dcm"
        phantoms.write_dataset(ds, path)
        refs.append(InstanceRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                                str(ds.StudyInstanceUID), str(path), "", 0))
    return refs


def _sr_bytes(headers: list[pydicom.Dataset]) -> bytes:
    pkg = load_package(CT_PACKAGE)
    target = headers[2]
    finding = Finding(label="finding", probability=0.9, sop_instance_uid=str(target.SOPInstanceUID),
                      sop_class_uid=str(target.SOPClassUID), box=Box(1.0, 2.0, 10.0, 12.0))
    result = InferenceResult(model_name=pkg.name, model_version=pkg.version, runtime="onnxruntime-cpu",
                             probability=0.9, positive=True, threshold=pkg.threshold, findings=(finding,),
                             scores=())
    sr = build_sr(headers, result, pkg, DeviceInfo(ae_title="EDGE_AI"),
                  created=datetime.datetime(2024, 1, 2, 3, 4, 5))
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_first_arrived_and_evidence_first_headers_stay_whole(tmp_path: Path) -> None:
    """Routing's header (first to arrive) and the SR's first evidence keep every attribute; others are slim."""
    refs = _series(tmp_path)
    headers, offsets = workers._read_headers(refs)
    full = [pydicom.dcmread(r.path, stop_before_pixels=True) for r in refs]
    first_evidence = min(range(len(full)), key=lambda i: workers._evidence_order(full[i]))
    assert first_evidence != 0
    for i, (slim, whole) in enumerate(zip(headers, full, strict=True)):
        if i in (0, first_evidence):
            assert slim == whole
        else:
            assert "PatientName" not in slim and slim.SOPInstanceUID == whole.SOPInstanceUID
            assert frames.frames(slim) == frames.frames(whole)  # same slice order
    assert all(o is not None for o in offsets)


def test_sr_from_slim_headers_is_byte_identical(tmp_path: Path) -> None:
    """The SR built from the worker's slim headers equals the one built from full headers."""
    refs = _series(tmp_path)
    headers, _ = workers._read_headers(refs)
    full = [pydicom.dcmread(r.path, stop_before_pixels=True) for r in refs]
    assert _sr_bytes(headers) == _sr_bytes(full)
