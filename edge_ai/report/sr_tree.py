"""The TID 1500 content tree of an edge_ai SR, encoded straight to bytes (see `edge_ai.report.sr`).

Mirrors, item for item, what highdicom's templates make of the arguments `sr_reference._content`
passes them (MeasurementReport, MeasurementsAndQualitativeEvaluations, PlanarROI..., Measurement,
AlgorithmIdentification, TrackingIdentifier, ObserverContext, ...), including the checks that make
highdicom refuse an input, so that the document and its failures are those of the reference. Each
item's elements are written in tag order by construction. tests/unit/test_sr_bytes.py holds the two
to the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from highdicom._standard_utils import is_attribute_in_iod, is_multiframe_image
from pydicom import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DS

from edge_ai.domain import Finding, InferenceResult
from edge_ai.report import codes
from edge_ai.report.dicom_bytes import Element, float64, floats32, item, sequence, text
from edge_ai.report.sr_common import (
    PROBABILITY_DECIMALS,
    CodeLike,
    DeviceInfo,
    LabelLike,
    PackageInfo,
    Prepared,
    box_points,
    round_p,
    series_label,
    sorted_findings,
)

Code = tuple[str, str, str]
"""A coded concept as (value, scheme designator, meaning)."""

_REL, _VT, _NAME, _CONTINUITY = 0x0040A010, 0x0040A040, 0x0040A043, 0x0040A050
_UID, _TEXT, _CONCEPT, _MEASURED = 0x0040A124, 0x0040A160, 0x0040A168, 0x0040A300
_TEMPLATE, _CONTENT = 0x0040A504, 0x0040A730
_WHOLE_SLIDE = "1.2.840.10008.5.1.4.1.1.77.1.6"

HAS_OBS, HAS_MOD, CONTAINS = "HAS OBS CONTEXT", "HAS CONCEPT MOD", "CONTAINS"
_LANGUAGE = ("121049", "DCM", "Language of Content Item and Descendants")
_EN_US = ("en-US", "RFC5646", "English (United States)")
_OBSERVER_TYPE, _DEVICE = ("121005", "DCM", "Observer Type"), ("121007", "DCM", "Device")
_PROCEDURE = ("121058", "DCM", "Procedure reported")
_MEASUREMENTS = ("126010", "DCM", "Imaging Measurements")
_GROUP = ("125007", "DCM", "Measurement Group")
_TRACKING_ID, _TRACKING_UID = ("112039", "DCM", "Tracking Identifier"), ("112040", "DCM", "Tracking Unique Identifier")
_SITE, _REGION, _SOURCE = (
    ("363698007", "SCT", "Finding Site"),
    ("111030", "DCM", "Image Region"),
    (
        "260753009",
        "SCT",
        "Source",
    ),
)
_ALGORITHM = (("111001", "DCM", "Algorithm Name"), ("111003", "DCM", "Algorithm Version"))
_PARAMETER = ("111002", "DCM", "Algorithm Parameters")
_DEVICE_ITEMS = (
    ("121013", "DCM", "Device Observer Name"),
    ("121014", "DCM", "Device Observer Manufacturer"),
    ("121015", "DCM", "Device Observer Model Name"),
    ("121016", "DCM", "Device Observer Serial Number"),
)


def code_of(c: CodeLike | object) -> Code:
    """(value, scheme, meaning) of a package label code or a highdicom/pydicom coded concept."""
    if hasattr(c, "scheme_designator"):
        return (str(c.value), str(c.scheme_designator), str(c.meaning))  # type: ignore[attr-defined]
    return (str(c.value), str(c.scheme), str(c.meaning))  # type: ignore[attr-defined]


@lru_cache(maxsize=512)
def code_item(code: Code, encodings: tuple[str, ...]) -> bytes:
    """The Code Sequence Macro item of `code`, as highdicom's CodedConcept sets it (a value over 16
    characters goes to Long Code Value, or URN Code Value for a URN/URL)."""
    value, scheme, meaning = code
    if len(meaning) > 64:
        raise ValueError("Code meaning can have maximally 64 characters.")
    out: list[Element] = []
    if len(value) <= 16:
        out.append(text(0x00080100, "SH", value, encodings))
    out += [text(0x00080102, "SH", scheme, encodings), text(0x00080104, "LO", meaning, encodings)]
    if len(value) > 16:
        urn = value.startswith("urn") or "://" in value
        out.append(text(0x00080120, "UR", value, encodings) if urn else text(0x00080119, "UC", value, encodings))
    return item(out, ordered=True)


class Tree:
    """Content items of one document, all in one character set (that of the SR)."""

    def __init__(self, encodings: Sequence[str]) -> None:
        self.enc = tuple(encodings)

    def head(self, rel: str | None, value_type: str, name: Code) -> list[Element]:
        out = [text(_REL, "CS", rel, self.enc)] if rel else []
        out += [text(_VT, "CS", value_type, self.enc), sequence(_NAME, [code_item(name, self.enc)])]
        return out

    def text_item(self, rel: str, name: Code, value: str) -> bytes:
        return item([*self.head(rel, "TEXT", name), text(_TEXT, "UT", str(value), self.enc)], ordered=True)

    def uid_item(self, rel: str, name: Code, uid: str) -> bytes:
        return item([*self.head(rel, "UIDREF", name), text(_UID, "UI", str(uid), self.enc)], ordered=True)

    def code_value_item(self, rel: str, name: Code, value: Code) -> bytes:
        concept = sequence(_CONCEPT, [code_item(value, self.enc)])
        return item([*self.head(rel, "CODE", name), concept], ordered=True)

    def container(self, rel: str | None, name: Code, template: str | None, children: list[bytes]) -> list[Element]:
        """A CONTAINER's elements (the root's are the document's own, hence not an item)."""
        out = [*self.head(rel, "CONTAINER", name), text(_CONTINUITY, "CS", "CONTINUOUS", self.enc)]
        if template is not None:
            tpl = item([text(0x00080105, "CS", "DCMR", self.enc), text(0x0040DB00, "CS", template, self.enc)])
            out.append(sequence(_TEMPLATE, [tpl]))
        out.append(sequence(_CONTENT, children))
        return out

    def num_item(self, name: Code, value: float, unit: Code, children: list[bytes]) -> bytes:
        """NUM as highdicom's NumContentItem: Numeric Value auto-formatted DS, and the float as FD."""
        measured: list[Element] = [sequence(0x004008EA, [code_item(unit, self.enc)])]
        if isinstance(value, float):
            measured.append(float64(0x0040A161, value))
        measured.append(text(0x0040A30A, "DS", str(DS(value, auto_format=True)), self.enc))
        out = [*self.head(CONTAINS, "NUM", name), sequence(_MEASURED, [item(measured, ordered=True)])]
        out.append(sequence(_CONTENT, children))
        return item(out, ordered=True)


def content_elements(
    p: Prepared, result: InferenceResult, package: PackageInfo, device: DeviceInfo, uid_root: str, tree: Tree
) -> list[Element]:
    """The root container's elements (Value Type ... Content Sequence) of the document."""
    label = series_label(package)
    algorithm = _algorithm(tree, package, result)
    groups = [_series_group(tree, result, label, algorithm, p.sop_uid, uid_root)]
    for index, finding in enumerate(sorted_findings(result.findings), start=1):
        source = p.by_uid[finding.sop_instance_uid]
        if not isinstance(source, Dataset):
            raise ValueError(f"the source of a finding ({finding.sop_instance_uid}) must be a header (Dataset)")
        groups.append(_finding_group(tree, finding, index, package, source, algorithm, p.sop_uid, uid_root))
    children = [
        tree.code_value_item(HAS_MOD, _LANGUAGE, _EN_US),
        *_observer(tree, device, p.dev_uid),
        tree.code_value_item(HAS_MOD, _PROCEDURE, code_of(codes.procedure_reported(str(p.first.get("Modality", ""))))),
        item(tree.container(CONTAINS, _MEASUREMENTS, None, groups), ordered=True),
        item(_document_evaluations(tree, result, label, package.disclaimer), ordered=True),
    ]
    return tree.container(None, code_of(codes.TITLE), "1500", children)


def _observer(tree: Tree, device: DeviceInfo, dev_uid: str) -> list[bytes]:
    """TID 1002 observer context of the node as a device (DeviceObserverIdentifyingAttributes)."""
    out = [
        tree.code_value_item(HAS_OBS, _OBSERVER_TYPE, _DEVICE),
        tree.uid_item(HAS_OBS, ("121012", "DCM", "Device Observer UID"), dev_uid),
    ]
    values = (device.ae_title, device.manufacturer, device.model_name, device.serial_number)
    out += [tree.text_item(HAS_OBS, name, v) for name, v in zip(_DEVICE_ITEMS, values, strict=True) if v is not None]
    return out


def _algorithm(tree: Tree, package: PackageInfo, result: InferenceResult) -> list[bytes]:
    """TID 4019 Algorithm Identification: name, version, threshold and runtime parameters."""
    params = [f"threshold={result.threshold:.{PROBABILITY_DECIMALS}f}", f"runtime={result.runtime}"]
    out = [
        tree.text_item(HAS_MOD, name, v) for name, v in zip(_ALGORITHM, (package.name, package.version), strict=True)
    ]
    return out + [tree.text_item(HAS_MOD, _PARAMETER, v) for v in params]


def _group_head(
    tree: Tree, name: str, sop_uid: str, uid_root: str, label: LabelLike, algorithm: list[bytes]
) -> list[bytes]:
    """Tracking identifier and UID, Finding, Finding Site and algorithm: how every group starts."""
    uid = str(generate_uid(prefix=uid_root, entropy_srcs=["edge_ai.sr.tracking", sop_uid, name]))
    out = [tree.text_item(HAS_OBS, _TRACKING_ID, name), tree.uid_item(HAS_OBS, _TRACKING_UID, uid)]
    out.append(tree.code_value_item(CONTAINS, code_of(codes.FINDING), code_of(label.finding)))
    if label.finding_site:
        out.append(tree.code_value_item(HAS_MOD, _SITE, code_of(label.finding_site)))
    return out + algorithm


def _probability(tree: Tree, p: float, algorithm: list[bytes]) -> bytes:
    return tree.num_item(code_of(codes.PROBABILITY), round_p(p), code_of(codes.UNIT_PROBABILITY), algorithm)


def _series_group(
    tree: Tree, result: InferenceResult, label: LabelLike, algorithm: list[bytes], sop_uid: str, uid_root: str
) -> bytes:
    """TID 1501: the series result (probability and Present/Absent)."""
    children = _group_head(tree, "Series result", sop_uid, uid_root, label, algorithm)
    children.append(_probability(tree, result.probability, algorithm))
    verdict = code_of(codes.PRESENT if result.positive else codes.ABSENT)
    children.append(tree.code_value_item(CONTAINS, code_of(label.finding), verdict))
    return item(tree.container(CONTAINS, _GROUP, "1501", children), ordered=True)


def _finding_group(
    tree: Tree,
    finding: Finding,
    index: int,
    package: PackageInfo,
    source: Dataset,
    algorithm: list[bytes],
    sop_uid: str,
    uid_root: str,
) -> bytes:
    """TID 1410: one finding's region on its source image (and frame), with its probability."""
    label = package.labels[finding.label]
    children = _group_head(tree, f"Finding {index}", sop_uid, uid_root, label, algorithm)
    children.append(_probability(tree, finding.probability, algorithm))
    children.append(_region(tree, finding, source))
    return item(tree.container(CONTAINS, _GROUP, "1410", children), ordered=True)


@lru_cache(maxsize=64)
def _multiframe_class(sop_class_uid: str) -> bool:
    return bool(is_attribute_in_iod("NumberOfFrames", sop_class_uid))


def _check_source(source: Dataset, frame: int | None) -> None:
    """highdicom's checks on a region's source image (SourceImageForRegion.from_source_image)."""
    if not any(hasattr(source, k) for k in ("Rows", "Columns", "SamplesPerPixel", "PixelRepresentation")):
        raise ValueError(
            "Dataset does not represent a valid source image for a measurement, segmentation, or region "
            "because it lacks image pixel description attributes."
        )
    if source.Modality in (
        "SEG",
        "SR",
        "DOC",
        "KO",
        "PR",
        "PLAN",
        "RWV",
        "REG",
        "FID",
        "RTDOSE",
        "RTPLAN",
        "RTRECORD",
        "RTSTRUCT",
    ):
        raise ValueError(f"Datasets with Modality '{source.Modality}' are not valid to use as source images")
    if frame is None:
        return
    if not is_multiframe_image(source):
        raise TypeError(
            "The dataset does not represent a multi-frame dataset, so no referenced frame numbers should be provided."
        )
    if frame < 1 or frame > source.NumberOfFrames:
        raise ValueError(f"{frame} is an invalid frame number for the given dataset")


def _region(tree: Tree, finding: Finding, source: Dataset) -> bytes:
    """SCOORD POLYLINE (the box, closed) SELECTED FROM the source image (and frame): ImageRegion."""
    _check_source(source, finding.frame_number)
    sop_class = str(source.SOPClassUID)
    ref: list[Element] = [
        text(0x00081150, "UI", sop_class, tree.enc),
        text(0x00081155, "UI", str(source.SOPInstanceUID), tree.enc),
    ]
    if finding.frame_number is not None:
        ref.append(text(0x00081160, "IS", str(int(finding.frame_number)), tree.enc))
    image = item(
        [sequence(0x00081199, [item(ref, ordered=True)]), *tree.head("SELECTED FROM", "IMAGE", _SOURCE)], ordered=True
    )
    out = [*tree.head(CONTAINS, "SCOORD", _REGION), sequence(_CONTENT, [image])]
    if _multiframe_class(sop_class) and sop_class == _WHOLE_SLIDE:
        out.append(text(0x00480301, "CS", "VOLUME", tree.enc))
    points = [v for point in box_points(finding) for v in point]
    out += [floats32(0x00700022, points), text(0x00700023, "CS", "POLYLINE", tree.enc)]
    return item(out, ordered=True)


def _document_evaluations(
    tree: Tree, result: InferenceResult, label: LabelLike, disclaimer: str | None
) -> list[Element]:
    """The document-level Qualitative Evaluations: the verdict, and the disclaimer as a Comment."""
    verdict = code_of(codes.PRESENT if result.positive else codes.ABSENT)
    children = [tree.code_value_item(CONTAINS, code_of(label.finding), verdict)]
    if disclaimer:
        children.append(tree.text_item(CONTAINS, code_of(codes.COMMENT), disclaimer))
    return tree.container(CONTAINS, code_of(codes.QUALITATIVE_EVALUATIONS), None, children)
