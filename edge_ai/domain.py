"""Pure data shared by every stage of the data flow; no I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class JobState(enum.StrEnum):
    """Life of a series job: received -> ready -> inferring -> reported -> delivered (or failed)."""

    RECEIVED = "received"
    READY = "ready"
    INFERRING = "inferring"
    REPORTED = "reported"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class InstanceRef:
    """One stored instance in the spool (never carries pixel data)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SeriesKey:
    """Identifies the unit of work: one source series."""

    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class Box:
    """An axis-aligned region in pixel coordinates of one source image (column, row; 0-based)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)


@dataclass(frozen=True)
class Finding:
    """One positive finding located on one source instance."""

    label: str  # key into the model package's labels
    probability: float
    sop_instance_uid: str
    sop_class_uid: str
    box: Box
    frame_number: int | None = None


@dataclass(frozen=True)
class InstanceScore:
    """The model's score for one source image (every instance, or every frame of a multi-frame one, gets
    one, finding or not)."""

    sop_instance_uid: str
    probability: float
    box: Box
    frame_number: int | None = None


@dataclass(frozen=True)
class InferenceResult:
    """What a model concluded about one series."""

    model_name: str
    model_version: str
    runtime: str
    probability: float  # series-level probability of the finding
    positive: bool
    threshold: float
    findings: tuple[Finding, ...] = ()
    scores: tuple[InstanceScore, ...] = field(default=())
