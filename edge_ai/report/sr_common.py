"""What every SR build shares: the inputs it takes, its derived UIDs, input checks and the content
fingerprint (see `edge_ai.report.sr` for the document itself).

Kept apart from the builders so that the fast encoder (`sr_document`, `sr_tree`) and the highdicom
reference (`sr_reference`) derive UIDs, order and rounding from the one code, and so give one document.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom import Dataset
from pydicom.uid import generate_uid

from edge_ai import __version__
from edge_ai.domain import Finding, InferenceResult

DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498."
"""pydicom's registered root; a site with its own org root passes it as `uid_root` (ends with '.')."""

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PROBABILITY_DECIMALS = 4
COORDINATE_DECIMALS = 2
_LO_MAX = 64


class CodeLike(Protocol):
    """A coded concept as the model package declares it (value, scheme, meaning)."""

    @property
    def value(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def meaning(self) -> str: ...


class LabelLike(Protocol):
    @property
    def finding(self) -> CodeLike: ...
    @property
    def finding_site(self) -> CodeLike | None: ...


class PackageInfo(Protocol):
    """What the SR needs from a model package; `inference.package.ModelPackage` satisfies it."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, LabelLike]: ...
    @property
    def disclaimer(self) -> str | None: ...


@dataclass(frozen=True)
class DeviceInfo:
    """The node as device observer and as the SR's equipment.

    `uid` is the Device Observer UID; when None it is derived from the AE title and serial number,
    so one node keeps one UID across restarts.
    """

    ae_title: str
    uid: str | None = None
    manufacturer: str = "edge_ai"
    model_name: str = "edge_ai"
    serial_number: str | None = None
    software_version: str = __version__


@dataclass(frozen=True, slots=True)
class SourceRef:
    """A source instance known by its UIDs alone: listed as evidence, never rendered from (a series of
    thousands of instances needs no header of most of them). See `build_sr` and `encode_evidence`."""

    SOPClassUID: str
    SOPInstanceUID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    InstanceNumber: int | None = None

    def get(self, keyword: str, default: Any = None) -> Any:
        return getattr(self, keyword, default)


Source = Dataset | SourceRef


@dataclass(frozen=True)
class Predecessor:
    """An earlier SR for the same series that this one supersedes (series reopened by a late instance)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str = COMPREHENSIVE_3D_SR


def sr_series_uid(source_series_uid: str, model_name: str, model_version: str, uid_root: str) -> str:
    """SR Series Instance UID: one SR series per (source series, model name+version)."""
    return str(
        generate_uid(prefix=uid_root, entropy_srcs=["edge_ai.sr.series", source_series_uid, model_name, model_version])
    )


def sr_instance_uid(series_uid: str, source_sop_uids: Sequence[str], fingerprint: str, uid_root: str) -> str:
    """SR SOP Instance UID from its series, the set of instances it covers and a hash of its content."""
    srcs = ["edge_ai.sr.instance", series_uid, *sorted(set(source_sop_uids)), fingerprint]
    return str(generate_uid(prefix=uid_root, entropy_srcs=srcs))


def device_uid(device: DeviceInfo, uid_root: str) -> str:
    """Device Observer UID: the configured one, else derived so the node keeps one UID for life."""
    if device.uid:
        return device.uid
    return str(
        generate_uid(prefix=uid_root, entropy_srcs=["edge_ai.device", device.ae_title, device.serial_number or ""])
    )


@dataclass(frozen=True)
class Prepared:
    """The inputs of one SR, checked and derived once for either builder.

    `sources` are in instance order (arrival order must not change the bytes); `first` is the header
    patient, study and equipment come from; `predecessor` is None when the caller's predecessor is
    this very document (an unchanged result re-issued is never its own predecessor).
    """

    sources: list[Source]
    first: Dataset
    by_uid: dict[str, Source]
    series_uid: str
    sop_uid: str
    dev_uid: str
    predecessor: Predecessor | None
    when: datetime.datetime


def prepare(
    sources: Sequence[Source],
    result: InferenceResult,
    package: PackageInfo,
    device: DeviceInfo,
    *,
    predecessor: Predecessor | None,
    uid_root: str,
    series_number: int,
    instance_number: int,
    created: datetime.datetime | None,
) -> Prepared:
    """Check the inputs of `build_sr` and derive its UIDs (raises as `build_sr` documents)."""
    by_uid = check_inputs(sources, result, package)
    ordered = sorted(sources, key=lambda s: (int(s.get("InstanceNumber") or 0), str(s.SOPInstanceUID)))
    first = ordered[0]
    if not isinstance(first, Dataset):
        raise ValueError("the first source in instance order must be a header (Dataset)")
    series_uid = sr_series_uid(first.SeriesInstanceUID, package.name, package.version, uid_root)
    dev_uid = device_uid(device, uid_root)
    fingerprint = _fingerprint(first, result, package, device, dev_uid, series_number, instance_number)
    sop_uid = sr_instance_uid(series_uid, list(by_uid), fingerprint, uid_root)
    # the UID already covers the source set and content; a predecessor with the same UID means an
    # unchanged result re-issued (e.g. re-processing), which must stay one object in PACS
    listed = predecessor if predecessor and predecessor.sop_instance_uid != sop_uid else None
    when = created or datetime.datetime.now()
    return Prepared(ordered, first, by_uid, series_uid, sop_uid, dev_uid, listed, when)


def series_label(package: PackageInfo) -> LabelLike:
    """The label of the series-level result: "finding" when the package has one, else its first."""
    return package.labels["finding"] if "finding" in package.labels else next(iter(package.labels.values()))


def check_inputs(sources: Sequence[Source], result: InferenceResult, package: PackageInfo) -> dict[str, Source]:
    if not sources:
        raise ValueError("build_sr needs at least one source instance")
    if {(s.StudyInstanceUID, s.SeriesInstanceUID) for s in sources} != {
        (sources[0].StudyInstanceUID, sources[0].SeriesInstanceUID)
    }:
        raise ValueError("all sources must belong to one series (one SR per source series)")
    if (result.model_name, result.model_version) != (package.name, package.version):
        raise ValueError(
            f"result is from {result.model_name} {result.model_version}, package is {package.name} {package.version}"
        )
    if not package.labels:
        raise ValueError(f"model package {package.name} has no labels")
    by_uid = {str(s.SOPInstanceUID): s for s in sources}
    for f in result.findings:
        if f.sop_instance_uid not in by_uid:
            raise ValueError(f"finding refers to SOP Instance UID {f.sop_instance_uid}, not among the sources")
        if f.label not in package.labels:
            raise ValueError(f"finding label {f.label!r} is not in model package {package.name} labels")
    return by_uid


def round_p(p: float) -> float:
    return round(float(p), PROBABILITY_DECIMALS)


def box_points(f: Finding) -> list[tuple[float, float]]:
    b = f.box
    x0, y0, x1, y1 = (round(float(v), COORDINATE_DECIMALS) for v in (b.x0, b.y0, b.x1, b.y1))
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def sorted_findings(findings: Sequence[Finding]) -> list[Finding]:
    """Stable order (so equal results render identically): strongest first, then by place."""
    return sorted(
        findings,
        key=lambda f: (-round_p(f.probability), f.sop_instance_uid, f.frame_number or 0, box_points(f)),
    )


def _fingerprint(
    first: Dataset,
    result: InferenceResult,
    package: PackageInfo,
    device: DeviceInfo,
    dev_uid: str,
    series_number: int,
    instance_number: int,
) -> str:
    """SHA-256 over everything the SR renders except timestamps (canonical JSON)."""
    labels = {
        k: [_code_tuple(v.finding), _code_tuple(v.finding_site) if v.finding_site else None]
        for k, v in sorted(package.labels.items())
    }
    patient_study = {
        k: str(first.get(k, ""))
        for k in (
            "PatientID",
            "PatientName",
            "PatientBirthDate",
            "PatientSex",
            "StudyID",
            "AccessionNumber",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
            "InstitutionName",
            "Modality",
        )
    }
    content: dict[str, Any] = {
        "model": [package.name, package.version, package.disclaimer, labels],
        "result": [result.positive, round_p(result.probability), round_p(result.threshold), result.runtime],
        "findings": [
            [f.label, round_p(f.probability), f.sop_instance_uid, f.frame_number, box_points(f)]
            for f in sorted_findings(result.findings)
        ],
        "device": [
            device.ae_title,
            dev_uid,
            device.manufacturer,
            device.model_name,
            device.serial_number,
            device.software_version,
        ],
        "numbers": [series_number, instance_number],
        "header": patient_study,
    }
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _code_tuple(c: CodeLike) -> list[str]:
    return [c.value, c.scheme, c.meaning]


PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def series_description(package: PackageInfo) -> str:
    text = f"AI {package.name} {package.version}"
    if package.disclaimer:
        text = f"{text} - {package.disclaimer}"
    return text if len(text) <= _LO_MAX else text[: _LO_MAX - 3] + "..."
