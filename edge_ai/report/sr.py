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

Built straight to bytes (`sr_tree` for the content tree, `sr_document` for the rest) rather than
through highdicom's document classes (~80 ms for one DX image): the bytes are those highdicom's SR
written by pydicom has, held so by tests/unit/test_sr_bytes.py against `sr_reference`, which keeps
the highdicom construction as the specification.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from io import BytesIO

import pydicom
from pydicom import Dataset

from edge_ai.domain import InferenceResult
from edge_ai.report.evidence import encode_evidence
from edge_ai.report.sr_common import (
    COMPREHENSIVE_3D_SR,
    COORDINATE_DECIMALS,
    DEFAULT_UID_ROOT,
    PROBABILITY_DECIMALS,
    CodeLike,
    DeviceInfo,
    LabelLike,
    PackageInfo,
    Predecessor,
    Source,
    SourceRef,
    device_uid,
    prepare,
    round_p,
    sorted_findings,
    sr_instance_uid,
    sr_series_uid,
)
from edge_ai.report.sr_document import document_bytes, document_charset
from edge_ai.report.sr_read import sr_summary
from edge_ai.report.sr_tree import Tree, content_elements

__all__ = [
    "COMPREHENSIVE_3D_SR",
    "COORDINATE_DECIMALS",
    "DEFAULT_UID_ROOT",
    "PROBABILITY_DECIMALS",
    "CodeLike",
    "DeviceInfo",
    "LabelLike",
    "PackageInfo",
    "Predecessor",
    "Source",
    "SourceRef",
    "build_sr",
    "device_uid",
    "render_sr",
    "round_p",
    "sorted_findings",
    "sr_instance_uid",
    "sr_series_uid",
    "sr_summary",
    "warm_up",
]


def warm_up() -> None:
    """Load highdicom's IOD/module tables now rather than inside the first SR built.

    Every SR build asks highdicom whether its IOD has Content Date; the first ask parses a 22 MB
    JSON table (0.4-0.7 s on the 2-core appliance, docs/performance.md), which otherwise lands in
    the first job's time-to-result (the patient and study attributes an SR copies from its source
    come from the same tables, `sr_document.copied_tags`). Call it once at start, before serving.
    """
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, is_attribute_in_iod

    is_attribute_in_iod("ContentDate", COMPREHENSIVE_3D_SR)
    get_iod_module_map()
    get_module_attribute_map()


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
) -> Dataset:
    """Build the SR for one source series' result.

    Args:
        sources: headers (pixel data not needed) of every instance of the source series; all are
            listed as evidence, with or without a finding. The first in instance order and every one a
            finding names must be a Dataset; the others may be `SourceRef`s, which the returned object
            does not list: `render_sr` gives the bytes with the complete Current Requested Procedure
            Evidence Sequence (service/evidence.py `render`).
        result: the model's conclusion; every finding must name a source instance.
        package: model name, version, coded labels and disclaimer.
        device: this node, reported as the device observer.
        predecessor: the SR this one replaces; listed in Predecessor Documents Sequence unless it
            is this very document (same UID: an unchanged result re-issued), which is never
            listed as its own predecessor.
        uid_root: org root for derived UIDs (must end with '.').
        series_number, instance_number: SR Series/Instance Number.
        created: Content/Instance Creation date and time; now (local) when None.

    Returns:
        The SR as pydicom reads its Part-10 bytes back (a FileDataset; `save_as` writes those bytes).

    Raises:
        ValueError: sources empty or from several series, a finding names an unknown instance or
            label, or the result is from another model than `package`.
    """
    return render_sr(
        sources,
        result,
        package,
        device,
        predecessor=predecessor,
        uid_root=uid_root,
        series_number=series_number,
        instance_number=instance_number,
        created=created,
        complete=False,
    )[0]


def render_sr(
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
    complete: bool = True,
) -> tuple[Dataset, bytes]:
    """`build_sr`'s object, and the Part-10 bytes of the SR: with every source listed as evidence
    (`complete`, what is sent), or only the header sources (what the object's `save_as` writes).

    Raises:
        ValueError: as `build_sr`.
    """
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
    tree = Tree(document_charset(p.first)[1])
    content = content_elements(p, result, package, device, uid_root, tree)
    numbers = {"series_number": series_number, "instance_number": instance_number}
    headers = [s for s in p.sources if isinstance(s, Dataset)]
    data = document_bytes(p, package, device, content, encode_evidence(headers), **numbers)
    if complete and len(headers) < len(p.sources):
        complete_data = document_bytes(p, package, device, content, encode_evidence(p.sources), **numbers)
    else:
        complete_data = data
    return pydicom.dcmread(BytesIO(data)), complete_data if complete else data
