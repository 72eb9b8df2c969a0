"""Pure data shared by every stage of the data flow; no I/O here."""

from __future__ import annotations

import enum
import re
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
class Job:
    """One generation of one series' work, as a worker claims it."""

    id: int
    series_id: int
    series_uid: str
    study_uid: str
    modality: str
    generation: int
    state: JobState


@dataclass(frozen=True, slots=True)
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
    scores: tuple[InstanceScore, ...] = field(default=())  # per image: kept by `summarize`, not by the node
    images: int = 0  # images (slices, frames) the model saw


_STRICT_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def uid_problem(value: str) -> str | None:
    """Why a peer's UID cannot be kept (None: it can). Storage is lenient as storescp, pynetdicom and
    Orthanc are (a component with a leading zero, a letter); only what is unsafe anywhere is refused:
    empty, over 64 characters, path separators, '..', control characters. Such a value is never used
    in a file path as it is: where a UID names a file or folder, `strict_uid` decides or it is hashed."""
    if not value:
        return "missing"
    if len(value) > 64:
        return "longer than 64 characters"
    if "/" in value or "\\" in value or ".." in value:
        return "contains a path separator or '..'"
    if any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        return "contains control or non-ASCII characters"
    return None


def strict_uid(value: str) -> bool:
    """A UID exactly as PS3.5 9.1 writes them: digits and dots, no leading zeros, at most 64 characters."""
    return len(value) <= 64 and _STRICT_UID.match(value) is not None
