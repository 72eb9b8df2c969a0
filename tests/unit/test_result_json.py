"""The job JSON of the HTTP API and the SR: rendered from one result, they never disagree."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from test_sr import CT_CLASS, DEVICE, PACKAGE, _image

from edge_ai.domain import Box, Finding, InferenceResult
from edge_ai.report import codes, result_json
from edge_ai.report.sr import COORDINATE_DECIMALS, build_sr

SHA = "ab" * 32


def _sr_view(sr: Dataset) -> dict[str, Any]:
    """What a PACS reader would take from the SR's TID 1500 content: the series verdict and every region."""
    series: dict[str, Any] = {}
    regions = []
    measurements = next(c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010")
    for group in measurements.ContentSequence:
        probability, code, present, region, tracking = None, None, None, None, None
        for item in group.ContentSequence:
            name = item.ConceptNameCodeSequence[0]
            if item.ValueType == "NUM" and name.CodeValue == codes.PROBABILITY.value:
                probability = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE" and name.CodeValue == codes.FINDING.value:
                c = item.ConceptCodeSequence[0]
                code = {"value": c.CodeValue, "scheme": c.CodingSchemeDesignator, "meaning": c.CodeMeaning}
            elif item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodeValue in (
                    codes.PRESENT.value, codes.ABSENT.value):
                present = item.ConceptCodeSequence[0].CodeValue == codes.PRESENT.value
            elif item.ValueType == "SCOORD":
                points = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
                ref = item.ContentSequence[0].ReferencedSOPSequence[0]
                frames = ref.get("ReferencedFrameNumber")
                # Graphic Data is FL: as stored (and as build_sr returns it, read back from its bytes) a
                # coordinate is the float32 nearest the 2-decimal value the JSON gives
                box = [points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()]
                region = {"box": [round(float(v), COORDINATE_DECIMALS) for v in box],
                          "sop_instance_uid": ref.ReferencedSOPInstanceUID,
                          "frame": int(frames) if frames else None}
            elif item.ValueType == "TEXT" and name.CodeValue == "112039":  # Tracking Identifier
                tracking = item.TextValue
        if region is None:
            series = {"code": code, "present": present, "confidence_score": probability}
        else:
            regions.append({**region, "label": tracking, "confidence_score": probability})
    return {"series": series, "regions": regions}


def _json_view(rendered: dict[str, Any]) -> dict[str, Any]:
    entry = rendered["findings"][0]
    return {"series": {k: entry[k] for k in ("code", "present", "confidence_score")},
            "regions": [{k: r[k] for k in ("box", "sop_instance_uid", "frame", "label", "confidence_score")}
                        for e in rendered["findings"] for r in e["regions_of_interest"]]}


def _ct_result(n_findings: int, seed: int) -> tuple[list[Dataset], InferenceResult]:
    rng = np.random.default_rng(seed)
    study, series = generate_uid(entropy_srcs=[f"s{seed}"]), generate_uid(entropy_srcs=[f"r{seed}"])
    sources = [_image(study, series, CT_CLASS, "CT", n, pixels=False) for n in range(1, 8)]
    findings = []
    for i in range(n_findings):
        x0, y0 = rng.uniform(0, 400, 2)
        findings.append(Finding("finding", float(rng.uniform(0.3, 0.99)), sources[i].SOPInstanceUID, CT_CLASS,
                                Box(x0, y0, x0 + rng.uniform(5, 90), y0 + rng.uniform(5, 90))))
    p = max((f.probability for f in findings), default=float(rng.uniform(0, 0.2)))
    return sources, InferenceResult(PACKAGE.name, PACKAGE.version, "onnxruntime-cpu", p, bool(findings), 0.3,
                                    tuple(findings))


@pytest.mark.parametrize("n_findings,seed", [(0, 1), (1, 2), (3, 3), (7, 4)])
def test_json_and_sr_say_the_same(n_findings: int, seed: int) -> None:
    """A client reading the job JSON and a radiologist reading the SR see the same verdict, scores and boxes."""
    sources, result = _ct_result(n_findings, seed)
    sr = build_sr(sources, result, PACKAGE, DEVICE, created=datetime.datetime(2024, 1, 1))
    rendered = result_json.render(result, PACKAGE, SHA, str(sr.SOPInstanceUID))
    assert _json_view(rendered) == _sr_view(sr)
    assert rendered["sr_sop_instance_uid"] == sr.SOPInstanceUID
    assert rendered["findings"][0]["present"] is (n_findings > 0)
    assert len(rendered["findings"][0]["regions_of_interest"]) == n_findings
    assert rendered["model"] == {"name": PACKAGE.name, "version": PACKAGE.version, "sha256": SHA,
                                 "runtime": "onnxruntime-cpu"}
