"""Model outputs -> InferenceResult (pure): per-instance scores, series verdict, located findings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_ai.domain import Box, Finding, InferenceResult, InstanceScore
from edge_ai.inference.engine import Outputs
from edge_ai.inference.package import ModelPackage

MAX_FINDINGS = 10  # a series reports at most this many located findings (highest scores first)


@dataclass(frozen=True)
class ImageInfo:
    """One model input: a single-frame instance, or one frame (`frame_number`, 1-based) of a multi-frame one."""

    sop_instance_uid: str
    sop_class_uid: str
    rows: int
    columns: int
    frame_number: int | None = None


def summarize(package: ModelPackage, runtime: str, images: Sequence[ImageInfo], out: Outputs) -> InferenceResult:
    """Combine one output row per image into the series result.

    The series probability is the highest image probability; every image at or above the
    threshold becomes a finding (up to MAX_FINDINGS), its box scaled to the image's pixels. A frame of
    a multi-frame instance counts as an image, as a slice does; its finding names the frame.
    """
    if len(images) != len(out.probability):
        raise ValueError(f"{len(images)} images but {len(out.probability)} model outputs")
    if not (np.isfinite(out.probability).all() and np.isfinite(out.box).all()):
        # NaN compares false both ways: max() and the threshold test would disagree about the series
        raise ValueError("model returned a non-finite probability or box")
    threshold = package.threshold
    scores = []
    for info, prob, box in zip(images, out.probability, out.box, strict=True):
        b = np.clip(box.astype(float), 0.0, 1.0)
        x0, x1 = sorted((b[0] * info.columns, b[2] * info.columns))
        y0, y1 = sorted((b[1] * info.rows, b[3] * info.rows))
        scores.append(InstanceScore(info.sop_instance_uid, float(prob), Box(x0, y0, x1, y1), info.frame_number))
    series_prob = max((s.probability for s in scores), default=0.0)
    positives = [k for k, s in enumerate(scores) if s.probability >= threshold]
    ranked = sorted(positives, key=lambda k: -scores[k].probability)
    findings = tuple(
        Finding(
            label="finding",
            probability=scores[k].probability,
            sop_instance_uid=scores[k].sop_instance_uid,
            sop_class_uid=images[k].sop_class_uid,
            box=scores[k].box,
            frame_number=images[k].frame_number,
        )
        for k in ranked[:MAX_FINDINGS]
    )
    return InferenceResult(
        model_name=package.name,
        model_version=package.version,
        runtime=runtime,
        probability=series_prob,
        positive=bool(findings),
        threshold=threshold,
        findings=findings,
        scores=tuple(scores),
    )
