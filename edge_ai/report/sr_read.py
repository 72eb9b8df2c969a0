"""Reading back an SR `edge_ai.report.sr.build_sr` made (e.g. as retrieved from PACS) into plain data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from highdicom.sr import CodedConcept
from pydicom import Dataset

from edge_ai.report import codes

_MEASUREMENT_GROUP = ("125007", "DCM")
_IMAGING_MEASUREMENTS = ("126010", "DCM")
_IMAGE_REGION = ("111030", "DCM")
_ALGORITHM_NAME = ("111001", "DCM")
_ALGORITHM_VERSION = ("111003", "DCM")


def _name(item: Dataset) -> tuple[str, str]:
    seq = item.get("ConceptNameCodeSequence")
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)) if seq else ("", "")


def _key(c: CodedConcept) -> tuple[str, str]:
    return (str(c.value), str(c.scheme_designator))


def _children(item: Dataset, key: tuple[str, str] | None = None) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if key is None or _name(c) == key]


def _code_value(item: Dataset) -> dict[str, str]:
    c = item.ConceptCodeSequence[0]
    return {"value": str(c.CodeValue), "scheme": str(c.CodingSchemeDesignator), "meaning": str(c.CodeMeaning)}


def _region(group: Dataset) -> dict[str, Any] | None:
    for scoord in _children(group, _IMAGE_REGION):
        points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
        if scoord.GraphicType == "POLYLINE" and len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        centre = points[0] if scoord.GraphicType in ("POINT", "CIRCLE") else points.mean(axis=0)
        image = next(c for c in _children(scoord) if c.ValueType == "IMAGE")
        ref = image.ReferencedSOPSequence[0]
        frames = ref.get("ReferencedFrameNumber")
        return {
            "sop_instance_uid": str(ref.ReferencedSOPInstanceUID),
            "frame_number": int(frames if not isinstance(frames, Sequence) else frames[0]) if frames else None,
            "graphic_type": str(scoord.GraphicType),
            "centre": (float(centre[0]), float(centre[1])),
        }
    return None


def _group_summary(group: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {"finding": None, "probability": None, "algorithm": None, "present": None}
    for item in _children(group):
        key = _name(item)
        if key == _key(codes.FINDING) and item.ValueType == "CODE":
            out["finding"] = _code_value(item)
        elif key == _key(codes.PROBABILITY) and item.ValueType == "NUM":
            out["probability"] = float(item.MeasuredValueSequence[0].NumericValue)
            algo = {_name(c): str(c.TextValue) for c in _children(item) if c.ValueType == "TEXT"}
            out["algorithm"] = (algo.get(_ALGORITHM_NAME), algo.get(_ALGORITHM_VERSION))
        elif item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodeValue in (
            codes.PRESENT.value,
            codes.ABSENT.value,
        ):
            out["present"] = item.ConceptCodeSequence[0].CodeValue == codes.PRESENT.value
    out["region"] = _region(group)
    return out


def sr_summary(ds: Dataset) -> dict[str, Any]:
    """Read back an SR built by `build_sr` (e.g. as retrieved from PACS) into plain data.

    Returns:
        dict with sop_instance_uid, series_instance_uid, positive (bool), probability (series),
        model (name, version), disclaimer (str | None), findings (list of {finding, probability,
        sop_instance_uid, frame_number, graphic_type, centre}), evidence (sorted SOP Instance UIDs)
        and predecessors (SOP Instance UIDs).

    Raises:
        ValueError: `ds` has no edge_ai series-result measurement group.
    """
    groups = [g for container in _children(ds, _IMAGING_MEASUREMENTS) for g in _children(container, _MEASUREMENT_GROUP)]
    summaries = [_group_summary(g) for g in groups]
    series = next((s for s in summaries if s["region"] is None and s["present"] is not None), None)
    if series is None:
        raise ValueError("not an edge_ai result SR: no series-result measurement group")
    disclaimer = None
    for container in _children(ds, _key(codes.QUALITATIVE_EVALUATIONS)):
        for item in _children(container, _key(codes.COMMENT)):
            disclaimer = str(item.TextValue)
    findings = [
        {"finding": s["finding"], "probability": s["probability"], **s["region"]}
        for s in summaries
        if s["region"] is not None
    ]
    return {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "positive": bool(series["present"]),
        "probability": series["probability"],
        "finding": series["finding"],
        "model": series["algorithm"],
        "disclaimer": disclaimer,
        "findings": findings,
        "evidence": sorted(
            str(ref.ReferencedSOPInstanceUID)
            for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series_item in study.ReferencedSeriesSequence
            for ref in series_item.ReferencedSOPSequence
        ),
        "predecessors": [
            str(ref.ReferencedSOPInstanceUID)
            for study in ds.get("PredecessorDocumentsSequence", [])
            for series_item in study.ReferencedSeriesSequence
            for ref in series_item.ReferencedSOPSequence
        ],
    }
