"""The SR built straight to bytes (report.sr) is byte for byte the SR highdicom builds (report.sr_reference).

Each case compares the Part-10 bytes both ways they leave the node: `service.evidence.render` (what is
stored and sent, every source listed as evidence) and `build_sr(...).save_as` (the object callers get).
"""

from __future__ import annotations

import datetime
import io
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from test_sr import CT_CLASS, DEVICE, DX_CLASS, PACKAGE, _Code, _image, _Label, _Package

from edge_ai.domain import Box, Finding, InferenceResult, InstanceScore
from edge_ai.report.evidence import encode_evidence
from edge_ai.report.sr import DeviceInfo, Predecessor, SourceRef, build_sr
from edge_ai.report.sr_reference import build_sr_reference
from edge_ai.service import evidence
from edge_ai.spool.header import element_span

CREATED = datetime.datetime(2024, 3, 4, 5, 6, 7)
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
TWO_LABELS = _Package(
    labels={
        "finding": _Label(
            _Code("427359005", "SCT", "Solitary nodule of lung"), _Code("39607008", "SCT", "Lung structure")
        ),
        "effusion": _Label(_Code("EFFUSION-LONG-CODE-VALUE-1", "99LOCAL", "Pleural effusion")),
        "urn": _Label(
            _Code("urn:oid:1.2.3.4.5.6.7.8.9", "99URN", "Something by URN"), _Code("T-D0050", "SRT", "Tissue")
        ),
    }
)


def _save(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _reference_render(sources: list[Any], result: InferenceResult, package: Any, **kw: Any) -> bytes:
    """What service/evidence.render wrote before: highdicom's SR, its evidence list completed by splicing."""
    data = _save(build_sr_reference(sources, result, package, **kw))
    if all(isinstance(s, Dataset) for s in sources):
        return data
    start = 144 + int.from_bytes(data[140:144], "little")
    span = element_span(data, start, 0x0040A375)
    assert span is not None
    return data[: span[0]] + encode_evidence(sources) + data[span[1] :]


def _series(modality: str, n: int, tag: str, charset: str | None = "ISO_IR 100") -> list[Dataset]:
    study, series = generate_uid(entropy_srcs=[tag, "study"]), generate_uid(entropy_srcs=[tag, "series"])
    sop_class = CT_CLASS if modality == "CT" else DX_CLASS
    out = [_image(study, series, sop_class, modality, i, pixels=False) for i in range(1, n + 1)]
    for ds in out:
        if charset is None:
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = charset
    return out


def _result(sources: list[Any], findings: list[tuple[int, str, float, int | None]], p: float) -> InferenceResult:
    made = tuple(
        Finding(
            label,
            prob,
            str(sources[on].SOPInstanceUID),
            str(sources[on].SOPClassUID),
            Box(10.0 + on, 20.25, 80.5 + on, 99.999),
            frame,
        )
        for on, label, prob, frame in findings
    )
    scores = tuple(InstanceScore(str(s.SOPInstanceUID), p, Box(0.0, 0.0, 1.0, 1.0)) for s in sources)
    return InferenceResult(PACKAGE.name, PACKAGE.version, "onnxruntime", p, bool(made), 0.5, made, scores)


def _refs(sources: list[Dataset], keep: set[int]) -> list[Any]:
    return [
        s
        if i in keep
        else SourceRef(s.SOPClassUID, s.SOPInstanceUID, s.StudyInstanceUID, s.SeriesInstanceUID, int(s.InstanceNumber))
        for i, s in enumerate(sources)
    ]


def _multiframe() -> list[Dataset]:
    [ds] = _series("CT", 1, "enhanced")
    ds.SOPClassUID = ENHANCED_CT
    ds.NumberOfFrames = 40
    return [ds]


def _odd_header() -> list[Dataset]:
    """Type 2 attributes missing, no institution, more patient/study attributes, acquisition date-time."""
    sources = _series("DX", 1, "odd")
    for keyword in ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName", "InstitutionName", "StudyTime"):
        delattr(sources[0], keyword)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID16", "RADLEX", "XR Chest"
    sources[0].ProcedureCodeSequence = DicomSequence([code])
    sources[0].PatientAge, sources[0].StudyDescription = "054Y", "Chest PA"
    sources[0].AcquisitionDateTime = "20240102101500"
    sources[0].SoftwareVersions = ["v1", "v2"]
    sources[0].ManufacturerModelName = "Modality 9000"
    return sources


def _names(charset: str, name: str, institution: str) -> list[Dataset]:
    sources = _series("DX", 1, f"names-{charset}", charset)
    sources[0].PatientName, sources[0].InstitutionName = name, institution
    return sources


def _from_disk(tmp: Path) -> list[Dataset]:
    sources = _series("CT", 4, "disk")
    paths = []
    for i, ds in enumerate(sources):
        paths.append(tmp / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


Case = Callable[[Path], tuple[list[Any], InferenceResult, dict[str, Any]]]
PRED = Predecessor("1.2.3.4.5.6", "1.2.3.4.5", "1.2.3.4")


def _self_predecessor(tmp: Path) -> tuple[list[Any], InferenceResult, dict[str, Any]]:
    s = _series("DX", 1, "self")
    r = _result(s, [(0, "finding", 0.8, None)], 0.8)
    first = build_sr(s, r, PACKAGE, DEVICE, created=CREATED)
    return s, r, {"predecessor": Predecessor(first.SOPInstanceUID, first.SeriesInstanceUID, first.StudyInstanceUID)}


def _ct(n: int, findings: list[tuple[int, str, float, int | None]], p: float, tag: str, **kw: Any) -> Case:
    def make(tmp: Path) -> tuple[list[Any], InferenceResult, dict[str, Any]]:
        s = _series("CT", n, tag)
        return s, _result(s, findings, p), kw

    return make


CASES: dict[str, Case] = {
    "dx negative": lambda t: (s := _series("DX", 1, "a"), _result(s, [], 0.12), {}),
    "dx positive": lambda t: (s := _series("DX", 1, "a"), _result(s, [(0, "finding", 0.87, None)], 0.87), {}),
    "ct negative": _ct(5, [], 0.01, "b"),
    "ct several findings": _ct(
        7,
        [(2, "finding", 0.9, None), (5, "effusion", 0.7, None), (0, "urn", 0.66, None), (2, "finding", 0.55, None)],
        0.9,
        "c",
        package=TWO_LABELS,
    ),
    "multiframe": lambda t: (
        s := _multiframe(),
        _result(s, [(0, "finding", 0.91, 3), (0, "finding", 0.6, 40)], 0.91),
        {},
    ),
    "predecessor": lambda t: (
        s := _series("DX", 1, "p"),
        _result(s, [(0, "finding", 0.6, None)], 0.6),
        {"predecessor": PRED},
    ),
    "self predecessor": _self_predecessor,
    "odd header": lambda t: (s := _odd_header(), _result(s, [(0, "finding", 0.75, None)], 0.75), {}),
    "no disclaimer, no site": lambda t: (
        s := _series("DX", 1, "d"),
        _result(s, [(0, "finding", 0.7, None)], 0.7),
        {"package": replace(PACKAGE, disclaimer=None, labels={"finding": _Label(_Code("F1", "99X", "Thing"))})},
    ),
    "latin-1 names": lambda t: (
        s := _names("ISO_IR 100", "Müller^Jürgen", "Klinik Zürich"),
        _result(s, [(0, "finding", 0.8, None)], 0.8),
        {},
    ),
    "utf-8 names": lambda t: (
        s := _names("ISO_IR 192", "Yamada^Tarou=山田^太郎", "Hôpital Nœud"),
        _result(s, [], 0.2),
        {"package": replace(PACKAGE, disclaimer="Nicht für Diagnostik")},
    ),
    "no character set": lambda t: (s := _series("DX", 1, "nocs", None), _result(s, [], 0.3), {}),
    "microseconds, no serial": lambda t: (
        s := _series("DX", 1, "us"),
        _result(s, [(0, "finding", 0.8, None)], 0.8),
        {"created": datetime.datetime(2024, 3, 4, 5, 6, 7, 120034), "device": DeviceInfo(ae_title="NODE2")},
    ),
    "source refs": lambda t: (
        _refs(_series("CT", 30, "refs"), {0, 12}),
        _result(_series("CT", 30, "refs"), [(12, "finding", 0.95, None)], 0.95),
        {},
    ),
    "source refs, negative": lambda t: (s := _refs(_series("CT", 9, "refs2"), {0, 4}), _result(s, [], 0.05), {}),
    "read from disk": lambda t: (
        s := _from_disk(t),
        _result(s, [(3, "finding", 0.88, None)], 0.88),
        {"series_number": 42, "instance_number": 3},
    ),
    "other uid root": lambda t: (
        s := _series("DX", 1, "root"),
        _result(s, [(0, "finding", 0.5001, None)], 0.5001),
        {"uid_root": "1.2.3."},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fast_sr_bytes_equal_highdicom_reference(name: str, tmp_path: Path) -> None:
    """The bytes sent (render) and the bytes the returned object writes (save_as) are highdicom's, byte for byte."""
    sources, result, kw = CASES[name](tmp_path)
    package = kw.pop("package", PACKAGE)
    kw.setdefault("device", DEVICE)
    kw.setdefault("created", CREATED)
    result = replace(result, model_name=package.name, model_version=package.version)
    reference = build_sr_reference(sources, result, package, **kw)
    sr, data = evidence.render(sources, result, package, **kw)
    assert data == _reference_render(sources, result, package, **kw)
    assert _save(build_sr(sources, result, package, **kw)) == _save(reference)
    assert _save(sr) == _save(reference)
    assert sr.SOPInstanceUID == reference.SOPInstanceUID and sr.get("PatientID") == reference.get("PatientID")


def test_fast_sr_refuses_what_highdicom_refuses() -> None:
    """A source highdicom would not build an SR from is refused the same way, not written anyway."""
    sources = _series("DX", 1, "bad")
    sources[0].PatientSex = "X"
    result = _result(sources, [], 0.1)
    with pytest.raises(ValueError):
        build_sr_reference(sources, result, PACKAGE, DEVICE, created=CREATED)
    with pytest.raises(ValueError):
        build_sr(sources, result, PACKAGE, DEVICE, created=CREATED)
