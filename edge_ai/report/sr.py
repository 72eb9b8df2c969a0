"""One series' inference result as a TID 1500 Comprehensive 3D SR (IHE AIR style); pure, never sends.

Document shape (codes in `edge_ai.report.codes`)::

    Imaging Measurement Report (TID 1500)
      Observation context: the node as device observer (TID 1004)
      Procedure reported: from the source Modality
      Imaging Measurements
        Measurement Group (TID 1501), the series result, always present:
          Finding = <label finding>, Finding Site, Algorithm Identification (TID 4019),
          Probability of finding = series probability, <label finding> = Present | Absent
        Measurement Group (TID 1410), one per Finding:
          Image Region (SCOORD POLYLINE rectangle on the source instance/frame), Finding,
          Finding Site, Algorithm Identification, Probability of finding
      Qualitative Evaluations
        <label finding> = Present | Absent     ("no finding" is explicit, machine-readable)
        Comment = the model's disclaimer       (when the package has one)

UIDs are derived, never random (see `sr_series_uid` and `sr_instance_uid`): the same result for the
same instances always yields the same SOP Instance UID, so a re-send never creates a second object
in PACS, and any change to what the SR says yields a new one. Probabilities are rounded to 4
decimals and coordinates to 2 before both hashing and rendering, so the UID covers exactly what the
document shows. Content/creation date and time are not covered by the UID: they record when this
copy was built (pass `created` to pin them, e.g. to the job's result time). Nor is the predecessor:
a reopened series always has a new source set, hence a new UID, while re-processing an unchanged
series must give back the same UID even when the caller names the earlier SR as predecessor.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM

from edge_ai import __version__
from edge_ai.domain import Finding, InferenceResult
from edge_ai.report import codes

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
        generate_uid(
            prefix=uid_root, entropy_srcs=["edge_ai.sr.series", source_series_uid, model_name, model_version]
        )
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
        generate_uid(
            prefix=uid_root, entropy_srcs=["edge_ai.device", device.ae_title, device.serial_number or ""]
        )
    )


def warm_up() -> None:
    """Load highdicom's IOD/module tables now rather than inside the first SR built.

    Every SR build asks highdicom whether its IOD has Content Date; the first ask parses a 22 MB
    JSON table (0.4-0.7 s on the 2-core appliance, docs/performance.md), which otherwise lands in
    the first job's time-to-result. Call it once at start, before serving. No effect (and no
    error) should highdicom move its private helper.
    """
    try:
        from highdicom._standard_utils import is_attribute_in_iod
    except ImportError:  # pragma: no cover - a highdicom without the helper simply is not warmed
        return
    is_attribute_in_iod("ContentDate", COMPREHENSIVE_3D_SR)


def build_sr(
    sources: Sequence[Source],
    result: InferenceResult,
    package: PackageInfo,
    device: DeviceInfo,
    *,
    predecessor: Predecessor | None = None,
    uid_root: str = DEFAULT_UID_ROOT,
    series_number: int = 9901,
    instance_number: int = 1,
    created: datetime.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the SR for one source series' result.

    Args:
        sources: headers (pixel data not needed) of every instance of the source series; all are
            listed as evidence, with or without a finding. The first in instance order and every one a
            finding names must be a Dataset; the others may be `SourceRef`s, which the returned object
            does not list: `report.evidence.encode_evidence` renders the complete Current Requested Procedure Evidence
            Sequence for its bytes (service/evidence.py `render`).
        result: the model's conclusion; every finding must name a source instance.
        package: model name, version, coded labels and disclaimer.
        device: this node, reported as the device observer.
        predecessor: the SR this one replaces; listed in Predecessor Documents Sequence unless it
            is this very document (same UID: an unchanged result re-issued), which is never
            listed as its own predecessor.
        uid_root: org root for derived UIDs (must end with '.').
        series_number, instance_number: SR Series/Instance Number.
        created: Content/Instance Creation date and time; now (local) when None.

    Raises:
        ValueError: sources empty or from several series, a finding names an unknown instance or
            label, or the result is from another model than `package`.
    """
    by_uid = _check_inputs(sources, result, package)
    # arrival order must not change the bytes: evidence is listed in instance order
    sources = sorted(sources, key=lambda s: (int(s.get("InstanceNumber") or 0), str(s.SOPInstanceUID)))
    first = sources[0]
    if not isinstance(first, Dataset):
        raise ValueError("the first source in instance order must be a header (Dataset)")
    series_uid = sr_series_uid(first.SeriesInstanceUID, package.name, package.version, uid_root)
    dev_uid = device_uid(device, uid_root)
    fingerprint = _fingerprint(first, result, package, device, dev_uid, series_number, instance_number)
    sop_uid = sr_instance_uid(series_uid, list(by_uid), fingerprint, uid_root)
    # the UID already covers the source set and content; a predecessor with the same UID means an
    # unchanged result re-issued (e.g. re-processing), which must stay one object in PACS
    listed = predecessor if predecessor and predecessor.sop_instance_uid != sop_uid else None

    content = _content(first, result, package, device, dev_uid, by_uid, sop_uid, uid_root)

    when = created or datetime.datetime.now()
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_with_type2_defaults(first), *(s for s in sources[1:] if isinstance(s, Dataset))],
        content=content,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=device.manufacturer,
        is_complete=False,
        is_final=False,
        is_verified=False,
        institution_name=first.get("InstitutionName") or None,
        previous_versions=[_predecessor_dataset(listed)] if listed else None,
        record_evidence=True,
        series_description=_series_description(package),
        manufacturer_model_name=device.model_name,
        software_versions=device.software_version,
        device_serial_number=device.serial_number or "",
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=codes.PRIVATE_SCHEME,
                name=codes.PRIVATE_SCHEME_NAME,
                responsible_organization=device.manufacturer,
            )
        ],
    )
    sr.InstanceCreationDate = DA(when.date())
    sr.InstanceCreationTime = TM(when.time())
    for equipment in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in equipment:  # highdicom stamps "now"; keep `created` authoritative
            equipment.ContributionDateTime = DT(when)
    return sr


def _content(
    first: Dataset,
    result: InferenceResult,
    package: PackageInfo,
    device: DeviceInfo,
    dev_uid: str,
    by_uid: Mapping[str, Source],
    sop_uid: str,
    uid_root: str,
) -> Dataset:
    """The TID 1500 content tree (root container) described in the module docstring."""
    series_label = (
        package.labels["finding"] if "finding" in package.labels else next(iter(package.labels.values()))
    )
    algorithm = AlgorithmIdentification(
        name=package.name,
        version=package.version,
        parameters=[f"threshold={result.threshold:.{PROBABILITY_DECIMALS}f}", f"runtime={result.runtime}"],
    )
    groups: list[MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations] = [
        _series_group(result, series_label, algorithm, sop_uid, uid_root)
    ]
    for index, finding in enumerate(_sorted_findings(result.findings), start=1):
        source = by_uid[finding.sop_instance_uid]
        if not isinstance(source, Dataset):
            raise ValueError(f"the source of a finding ({finding.sop_instance_uid}) must be a header (Dataset)")
        groups.append(_finding_group(finding, index, package, source, algorithm, sop_uid, uid_root))

    observer = ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=dev_uid,
            name=device.ae_title,
            manufacturer_name=device.manufacturer,
            model_name=device.model_name,
            serial_number=device.serial_number,
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.procedure_reported(str(first.get("Modality", ""))),
        imaging_measurements=groups,
        title=codes.TITLE,
    )
    report[0].ContentSequence.append(_document_evaluations(result, series_label, package.disclaimer))

    return report[0]


def _check_inputs(
    sources: Sequence[Source], result: InferenceResult, package: PackageInfo
) -> dict[str, Source]:
    if not sources:
        raise ValueError("build_sr needs at least one source instance")
    if {(s.StudyInstanceUID, s.SeriesInstanceUID) for s in sources} != {
        (sources[0].StudyInstanceUID, sources[0].SeriesInstanceUID)
    }:
        raise ValueError("all sources must belong to one series (one SR per source series)")
    if (result.model_name, result.model_version) != (package.name, package.version):
        raise ValueError(
            f"result is from {result.model_name} {result.model_version}, "
            f"package is {package.name} {package.version}"
        )
    if not package.labels:
        raise ValueError(f"model package {package.name} has no labels")
    by_uid = {str(s.SOPInstanceUID): s for s in sources}
    for f in result.findings:
        if f.sop_instance_uid not in by_uid:
            raise ValueError(
                f"finding refers to SOP Instance UID {f.sop_instance_uid}, not among the sources"
            )
        if f.label not in package.labels:
            raise ValueError(f"finding label {f.label!r} is not in model package {package.name} labels")
    return by_uid


def _round_p(p: float) -> float:
    return round(float(p), PROBABILITY_DECIMALS)


def _box_points(f: Finding) -> list[tuple[float, float]]:
    b = f.box
    x0, y0, x1, y1 = (round(float(v), COORDINATE_DECIMALS) for v in (b.x0, b.y0, b.x1, b.y1))
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def _sorted_findings(findings: Sequence[Finding]) -> list[Finding]:
    """Stable order (so equal results render identically): strongest first, then by place."""
    return sorted(
        findings,
        key=lambda f: (-_round_p(f.probability), f.sop_instance_uid, f.frame_number or 0, _box_points(f)),
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
        "result": [result.positive, _round_p(result.probability), _round_p(result.threshold), result.runtime],
        "findings": [
            [f.label, _round_p(f.probability), f.sop_instance_uid, f.frame_number, _box_points(f)]
            for f in _sorted_findings(result.findings)
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


def _concept(c: CodeLike) -> CodedConcept:
    return codes.coded(c.value, c.scheme, c.meaning)


def _sites(label: LabelLike) -> list[FindingSite] | None:
    return [FindingSite(anatomic_location=_concept(label.finding_site))] if label.finding_site else None


def _tracking(name: str, sop_uid: str, uid_root: str) -> TrackingIdentifier:
    uid = generate_uid(prefix=uid_root, entropy_srcs=["edge_ai.sr.tracking", sop_uid, name])
    return TrackingIdentifier(uid=str(uid), identifier=name)


def _probability(p: float, algorithm: AlgorithmIdentification) -> Measurement:
    return Measurement(
        name=codes.PROBABILITY, value=_round_p(p), unit=codes.UNIT_PROBABILITY, algorithm_id=algorithm
    )


def _series_group(
    result: InferenceResult, label: LabelLike, algorithm: AlgorithmIdentification, sop_uid: str, uid_root: str
) -> MeasurementsAndQualitativeEvaluations:
    finding = _concept(label.finding)
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking("Series result", sop_uid, uid_root),
        finding_type=finding,
        finding_sites=_sites(label),
        algorithm_id=algorithm,
        measurements=[_probability(result.probability, algorithm)],
        qualitative_evaluations=[
            QualitativeEvaluation(name=finding, value=codes.PRESENT if result.positive else codes.ABSENT)
        ],
    )


def _finding_group(
    finding: Finding,
    index: int,
    package: PackageInfo,
    source: Dataset,
    algorithm: AlgorithmIdentification,
    sop_uid: str,
    uid_root: str,
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    label = package.labels[finding.label]
    frames = [finding.frame_number] if finding.frame_number is not None else None
    region = ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=np.array(_box_points(finding), dtype=np.float64),
        source_image=SourceImageForRegion.from_source_image(source, referenced_frame_numbers=frames),
    )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(f"Finding {index}", sop_uid, uid_root),
        referenced_region=region,
        finding_type=_concept(label.finding),
        finding_sites=_sites(label),
        algorithm_id=algorithm,
        measurements=[_probability(finding.probability, algorithm)],
    )


def _document_evaluations(
    result: InferenceResult, label: LabelLike, disclaimer: str | None
) -> ContainerContentItem:
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    items: list[Dataset] = [
        CodeContentItem(
            name=_concept(label.finding),
            value=codes.PRESENT if result.positive else codes.ABSENT,
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
    ]
    if disclaimer:
        items.append(
            TextContentItem(
                name=codes.COMMENT, value=disclaimer, relationship_type=RelationshipTypeValues.CONTAINS
            )
        )
    container.ContentSequence = DicomSequence(items)
    return container


_PATIENT_STUDY_TYPE2 = (
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


def _with_type2_defaults(ds: Dataset) -> Dataset:
    """A copy of the first source's header with absent Type 2 patient/study attributes present but
    empty, as the SR's Patient and General Study modules require (highdicom reads them directly)."""
    header = Dataset(dict(ds.items()))  # new element map; the caller's dataset is left untouched
    for keyword in _PATIENT_STUDY_TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _predecessor_dataset(p: Predecessor) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = p.sop_class_uid
    ds.SOPInstanceUID = p.sop_instance_uid
    ds.SeriesInstanceUID = p.series_instance_uid
    ds.StudyInstanceUID = p.study_instance_uid
    return ds


def _series_description(package: PackageInfo) -> str:
    text = f"AI {package.name} {package.version}"
    if package.disclaimer:
        text = f"{text} - {package.disclaimer}"
    return text if len(text) <= _LO_MAX else text[: _LO_MAX - 3] + "..."


# --- reading back -------------------------------------------------------------------------------

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
            "frame_number": int(frames if not isinstance(frames, Sequence) else frames[0])
            if frames
            else None,
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
    groups = [
        g
        for container in _children(ds, _IMAGING_MEASUREMENTS)
        for g in _children(container, _MEASUREMENT_GROUP)
    ]
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
