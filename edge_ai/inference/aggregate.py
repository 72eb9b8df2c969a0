"""Model outputs -> InferenceResult (pure): per-instance scores, series verdict, located findings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class Images:
    """The model inputs of a series as columns (one entry per image), as the job store gives them back:
    no object per image, so a series of 10,000 slices concludes in the memory of a few lists."""

    sop_instance_uids: Sequence[str]
    sop_class_uids: Sequence[str]
    rows: Sequence[int]
    columns: Sequence[int]
    frame_numbers: Sequence[int | None]


def conclude(package: ModelPackage, runtime: str, images: Images, out: Outputs) -> InferenceResult:
    """Combine one output row per image into the series result (without per-image scores).

    The series probability is the highest image probability; every image at or above the
    threshold becomes a finding (up to MAX_FINDINGS), its box scaled to the image's pixels. A frame of
    a multi-frame instance counts as an image, as a slice does; its finding names the frame.
    """
    count = len(images.sop_instance_uids)
    if count != len(out.probability):
        raise ValueError(f"{count} images but {len(out.probability)} model outputs")
    if not (np.isfinite(out.probability).all() and np.isfinite(out.box).all()):
        # NaN compares false both ways: max() and the threshold test would disagree about the series
        raise ValueError("model returned a non-finite probability or box")
    threshold = package.threshold
    probability = np.asarray(out.probability).astype(np.float64)  # compared as Python floats always were
    positives = np.flatnonzero(probability >= threshold)
    ranked = positives[np.argsort(-probability[positives], kind="stable")][:MAX_FINDINGS]
    findings = tuple(
        Finding(
            label="finding",
            probability=float(out.probability[k]),
            sop_instance_uid=images.sop_instance_uids[k],
            sop_class_uid=images.sop_class_uids[k],
            box=_scaled(out.box[k], images.rows[k], images.columns[k]),
            frame_number=images.frame_numbers[k],
        )
        for k in ranked
    )
    return InferenceResult(
        model_name=package.name,
        model_version=package.version,
        runtime=runtime,
        probability=float(out.probability[int(np.argmax(probability))]) if count else 0.0,
        positive=bool(findings),
        threshold=threshold,
        findings=findings,
        images=count,
    )


def summarize(package: ModelPackage, runtime: str, images: Sequence[ImageInfo], out: Outputs) -> InferenceResult:
    """`conclude`, with every image's score and scaled box kept in `scores` (tests, whole-series tools)."""
    result = conclude(package, runtime, Images([i.sop_instance_uid for i in images],
                                               [i.sop_class_uid for i in images], [i.rows for i in images],
                                               [i.columns for i in images], [i.frame_number for i in images]), out)
    scores = tuple(InstanceScore(info.sop_instance_uid, float(prob), _scaled(box, info.rows, info.columns),
                                 info.frame_number)
                   for info, prob, box in zip(images, out.probability, out.box, strict=True))
    return replace(result, scores=scores)


def _scaled(box: np.ndarray, rows: int, columns: int) -> Box:
    """A model box (0..1 of the input, clipped) in the image's pixels, corners ordered."""
    b = np.clip(box.astype(float), 0.0, 1.0)
    x0, x1 = sorted((b[0] * columns, b[2] * columns))
    y0, y1 = sorted((b[1] * rows, b[3] * rows))
    return Box(x0, y0, x1, y1)
