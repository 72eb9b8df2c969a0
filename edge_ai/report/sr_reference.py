"""The SR as highdicom builds it: the reference `build_sr`'s fast encoder must equal byte for byte.

This is how edge_ai built every SR before `sr_document` (about 80 ms for one DX image, most of it in
highdicom's document checks and copies). It stays as the specification of the bytes: the unit tests
(tests/unit/test_sr_bytes.py) compare the fast path's Part-10 output with this one's for many
inputs, so a highdicom or pydicom upgrade that changes what highdicom writes shows up as a failing
test rather than as a silent drift. Not used on the serving path.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

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

from edge_ai.domain import Finding, InferenceResult
from edge_ai.report import codes
from edge_ai.report.sr_common import (
    DEFAULT_UID_ROOT,
    PATIENT_STUDY_TYPE2,
    PROBABILITY_DECIMALS,
    CodeLike,
    DeviceInfo,
    LabelLike,
    PackageInfo,
    Predecessor,
    Source,
    box_points,
    prepare,
    round_p,
    series_description,
    series_label,
    sorted_findings,
)


def build_sr_reference(
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
    """`edge_ai.report.sr.build_sr` as highdicom builds it (same arguments, same document, same errors)."""
    p = prepare(
        sources,
        result,
        package,
        device,
        predecessor=predecessor,
        uid_root=uid_root,
        series_number=series_number,
        instance_number=instance_number,
        created=created,
    )
    first, when = p.first, p.when
    content = _content(first, result, package, device, p.dev_uid, p.by_uid, p.sop_uid, uid_root)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_with_type2_defaults(first), *(s for s in p.sources[1:] if isinstance(s, Dataset))],
        content=content,
        series_instance_uid=p.series_uid,
        series_number=series_number,
        sop_instance_uid=p.sop_uid,
        instance_number=instance_number,
        manufacturer=device.manufacturer,
        is_complete=False,
        is_final=False,
        is_verified=False,
        institution_name=first.get("InstitutionName") or None,
        previous_versions=[_predecessor_dataset(p.predecessor)] if p.predecessor else None,
        record_evidence=True,
        series_description=series_description(package),
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
    label = series_label(package)
    algorithm = AlgorithmIdentification(
        name=package.name,
        version=package.version,
        parameters=[f"threshold={result.threshold:.{PROBABILITY_DECIMALS}f}", f"runtime={result.runtime}"],
    )
    groups: list[MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations] = [
        _series_group(result, label, algorithm, sop_uid, uid_root)
    ]
    for index, finding in enumerate(sorted_findings(result.findings), start=1):
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
    report[0].ContentSequence.append(_document_evaluations(result, label, package.disclaimer))

    return report[0]


def _concept(c: CodeLike) -> CodedConcept:
    return codes.coded(c.value, c.scheme, c.meaning)


def _sites(label: LabelLike) -> list[FindingSite] | None:
    return [FindingSite(anatomic_location=_concept(label.finding_site))] if label.finding_site else None


def _tracking(name: str, sop_uid: str, uid_root: str) -> TrackingIdentifier:
    uid = generate_uid(prefix=uid_root, entropy_srcs=["edge_ai.sr.tracking", sop_uid, name])
    return TrackingIdentifier(uid=str(uid), identifier=name)


def _probability(p: float, algorithm: AlgorithmIdentification) -> Measurement:
    return Measurement(name=codes.PROBABILITY, value=round_p(p), unit=codes.UNIT_PROBABILITY, algorithm_id=algorithm)


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
        graphic_data=np.array(box_points(finding), dtype=np.float64),
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


def _document_evaluations(result: InferenceResult, label: LabelLike, disclaimer: str | None) -> ContainerContentItem:
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
            TextContentItem(name=codes.COMMENT, value=disclaimer, relationship_type=RelationshipTypeValues.CONTAINS)
        )
    container.ContentSequence = DicomSequence(items)
    return container


def _with_type2_defaults(ds: Dataset) -> Dataset:
    """A copy of the first source's header with absent Type 2 patient/study attributes present but
    empty, as the SR's Patient and General Study modules require (highdicom reads them directly)."""
    header = Dataset(dict(ds.items()))  # new element map; the caller's dataset is left untouched
    for keyword in PATIENT_STUDY_TYPE2:
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
