"""One series' inference result as the HTTP API's job JSON (SPEC "HTTP API": model, findings); pure.

Rendered from the same InferenceResult as the SR (report/sr.py) at the moment the SR is written, with the
same rounding (probabilities to 4 decimals, coordinates to 2) and the same finding order, so the two
never disagree: the series finding with its Present/Absent and probability, and one region of interest
per located finding (the SR's TID 1410 groups).
"""

from __future__ import annotations

from typing import Any

from edge_ai.domain import Finding, InferenceResult
from edge_ai.report.sr_common import COORDINATE_DECIMALS, LabelLike, PackageInfo, round_p, sorted_findings


def _code(label: LabelLike) -> dict[str, str]:
    c = label.finding
    return {"value": c.value, "scheme": c.scheme, "meaning": c.meaning}


def _region(finding: Finding, index: int) -> dict[str, Any]:
    b = finding.box
    return {
        "box": [round(float(v), COORDINATE_DECIMALS) for v in (b.x0, b.y0, b.x1, b.y1)],
        "label": f"Finding {index}",  # the SR's tracking identifier of the same region
        "sop_instance_uid": finding.sop_instance_uid,
        "frame": finding.frame_number,
        "confidence_score": round_p(finding.probability),
    }


def render(result: InferenceResult, package: PackageInfo, sha256: str, sr_sop_instance_uid: str) -> dict[str, Any]:
    """The job JSON's result part: {"model", "findings", "sr_sop_instance_uid"}.

    One entry per label: the series label (always, "no finding" explicit as present false) and any other
    label that has located findings; regions keep the SR's order and numbering.
    """
    labels = package.labels
    series_key = "finding" if "finding" in labels else next(iter(labels))
    ordered = list(enumerate(sorted_findings(result.findings), start=1))
    entries = [{
        "code": _code(labels[series_key]),
        "present": bool(result.positive),
        "confidence_score": round_p(result.probability),
        "regions_of_interest": [_region(f, i) for i, f in ordered if f.label == series_key],
    }]
    for key in sorted({f.label for f in result.findings} - {series_key}):
        mine = [(i, f) for i, f in ordered if f.label == key]
        entries.append({
            "code": _code(labels[key]),
            "present": True,
            "confidence_score": max(round_p(f.probability) for _, f in mine),
            "regions_of_interest": [_region(f, i) for i, f in mine],
        })
    return {
        "model": {"name": result.model_name, "version": result.model_version, "sha256": sha256,
                  "runtime": result.runtime},
        "findings": entries,
        "sr_sop_instance_uid": sr_sop_instance_uid,
    }
