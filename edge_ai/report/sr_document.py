"""The SR document around the content tree (Patient, General Study, SR Document Series, General
Equipment, SR Document General, SOP Common and the file meta), encoded straight to Part-10 bytes.

Mirrors what highdicom's `Comprehensive3DSR.__init__` (`_SR`, `SOPClass`) sets for the arguments
`sr_reference.build_sr_reference` passes it, including the checks that make it refuse an input:
patient and study attributes are the first source's, copied element by element for every attribute
of its IOD's Patient and Study modules (highdicom's own tables decide which), and written by pydicom
so they keep their exact encoding; the rest is written by `dicom_bytes`. The document's bytes are the
ones pydicom's `save_as(..., enforce_file_format=True)` writes for highdicom's dataset.
"""

from __future__ import annotations

import datetime
import struct
from functools import lru_cache
from typing import Any

from highdicom import __version__ as highdicom_version
from highdicom._standard_utils import (
    does_iod_have_pixel_data,
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from highdicom.base_content import ContributingEquipment
from highdicom.enum import PatientSexValues
from highdicom.valuerep import _check_long_string, _check_specific_character_set
from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.valuerep import DA, DT, TM

from edge_ai.report import codes
from edge_ai.report.dicom_bytes import (
    Element,
    dataset_bytes,
    element,
    item,
    pydicom_element,
    pydicom_item,
    sequence,
    text,
)
from edge_ai.report.sr_common import (
    COMPREHENSIVE_3D_SR,
    PATIENT_STUDY_TYPE2,
    DeviceInfo,
    PackageInfo,
    Predecessor,
    Prepared,
    series_description,
)
from edge_ai.report.sr_tree import code_item

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"  # highdicom's, as its SR carries it
_PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")


def document_bytes(
    p: Prepared,
    package: PackageInfo,
    device: DeviceInfo,
    content: list[Element],
    evidence: bytes,
    *,
    series_number: int,
    instance_number: int,
) -> bytes:
    """The SR's Part-10 bytes: preamble, file meta, and the dataset of `content` (the root container's
    elements) and `evidence` (an encoded Current Requested Procedure Evidence Sequence)."""
    charset, encodings = document_charset(p.first)
    elements = _own_elements(p, package, device, encodings, series_number, instance_number)
    elements[0x0040A375] = evidence
    elements.update(content)
    if p.predecessor is not None:
        elements.update([_predecessors(p.predecessor, encodings)])
    if charset is not None:
        elements.update([pydicom_element(DataElement(0x00080005, "CS", charset), charset)])
    institution = p.first.get("InstitutionName") or None
    if institution is not None:
        elements.update([pydicom_element(DataElement(0x00080080, "LO", institution), charset)])
    elements.update(_equipment(p, encodings, charset))
    elements.update(_patient_and_study(p.first, charset))
    return file_meta(p.sop_uid) + dataset_bytes(elements.items())


def document_charset(first: Dataset) -> tuple[Any, list[str]]:
    """The SR's Specific Character Set (the first source's, checked as highdicom checks it; None when
    it has none) and the Python codecs pydicom writes its text with."""
    charset = first.get("SpecificCharacterSet")
    if charset is not None:
        charset = _check_specific_character_set(charset)
    return charset, convert_encodings(charset or ["ISO_IR 6"])


def file_meta(sop_uid: str) -> bytes:
    """Preamble, DICM and the File Meta Information group as highdicom sets it and pydicom writes it."""
    meta = [
        element(0x00020001, "OB", b"\x00\x01"),
        text(0x00020002, "UI", COMPREHENSIVE_3D_SR, ()),
        text(0x00020003, "UI", sop_uid, ()),
        text(0x00020010, "UI", EXPLICIT_VR_LITTLE_ENDIAN, ()),
        text(0x00020012, "UI", _IMPLEMENTATION_CLASS_UID, ()),
        text(0x00020013, "SH", f"highdicom{highdicom_version}", ()),
    ]
    body = b"".join(encoded for _, encoded in meta)
    length = element(0x00020000, "UL", struct.pack("<L", len(body)))[1]
    return b"\x00" * 128 + b"DICM" + length + body


def _dicom_time(value: DA | TM | DT) -> str:
    """A DA/TM/DT value as pydicom writes it."""
    return str(value.original_string)


def _own_elements(
    p: Prepared, package: PackageInfo, device: DeviceInfo, enc: list[str], series_number: int, instance_number: int
) -> dict[int, bytes]:
    """The elements the SR sets itself (not copied from the source), checked as highdicom checks them."""
    _check_header(p.first, series_number, instance_number)
    description = series_description(package)
    for value in (
        description,
        device.manufacturer,
        device.model_name,
        device.serial_number or "",
        device.software_version,
    ):
        _check_long_string(value)
    when = p.when
    date, time = _dicom_time(DA(when.date())), _dicom_time(TM(when.time()))
    scheme = item(
        [
            text(0x00080102, "SH", codes.PRIVATE_SCHEME, enc),
            text(0x00080115, "ST", codes.PRIVATE_SCHEME_NAME, enc),
            text(0x00080116, "ST", device.manufacturer, enc),
        ],
        ordered=True,
    )
    own = [
        text(0x00080012, "DA", date, enc),
        text(0x00080013, "TM", time, enc),
        text(0x00080016, "UI", COMPREHENSIVE_3D_SR, enc),
        text(0x00080018, "UI", p.sop_uid, enc),
        text(0x00080021, "DA", date, enc),
        text(0x00080023, "DA", date, enc),
        text(0x00080031, "TM", time, enc),
        text(0x00080033, "TM", time, enc),
        text(0x00080060, "CS", "SR", enc),
        text(0x00080070, "LO", device.manufacturer, enc),
        sequence(0x00080110, [scheme]),
        text(0x0008103E, "LO", description, enc),
        text(0x00081090, "LO", device.model_name, enc),
        sequence(0x00081111, []),
        text(0x00181000, "LO", device.serial_number or "", enc),
        text(0x00181020, "LO", device.software_version, enc),
        text(0x0020000E, "UI", p.series_uid, enc),
        text(0x00200011, "IS", str(series_number), enc),
        text(0x00200013, "IS", str(instance_number), enc),
        sequence(0x0040A372, []),
        text(0x0040A491, "CS", "PARTIAL", enc),
        text(0x0040A493, "CS", "UNVERIFIED", enc),
        text(0x0040A496, "CS", "PRELIMINARY", enc),
    ]
    return dict(own)


def _check_header(first: Dataset, series_number: int, instance_number: int) -> None:
    """What makes highdicom's SOPClass refuse the source's patient and study values or our numbers."""
    birth_date = first.get("PatientBirthDate", "")
    DA(birth_date)
    sex = first.get("PatientSex", "")
    if sex is not None and sex != "":
        PatientSexValues(sex)
    for keyword, kind in (("StudyDate", DA), ("StudyTime", TM)):
        value = first.get(keyword, "")
        if value is not None:
            kind(value)
    if series_number < 1:
        raise ValueError('Argument "series_number" should be a positive integer.')
    if instance_number < 1:
        raise ValueError('Argument "instance_number" should be a positive integer.')


# highdicom's "is this SOP class an image" walks its IOD tables (~5 ms per SR): asked once per class
_is_image = lru_cache(maxsize=256)(does_iod_have_pixel_data)


def _acquisition_equipment(first: Dataset) -> ContributingEquipment | None:
    """`ContributingEquipment.for_image_acquisition(first)`, its very arguments, with the image check
    cached per SOP class (the byte tests hold it to highdicom's); None where highdicom raises, as its SR
    then lists no acquisition equipment (not an image, no Manufacturer, any bad value)."""
    try:
        return _described_acquisition(first)
    except Exception:  # any error: highdicom's SR leaves the item out
        return None


def _described_acquisition(first: Dataset) -> ContributingEquipment:
    if not _is_image(str(first.SOPClassUID)):
        raise ValueError("Dataset does not represent an Image.")
    manufacturer = first.get("Manufacturer")
    if manufacturer is None or manufacturer == "":
        raise AttributeError("Dataset has no manufacturer information.")
    when = first.get("AcquisitionDateTime")
    if when is None:
        date, time = first.get("AcquisitionDate"), first.get("AcquisitionTime")
        if isinstance(date, datetime.date) and isinstance(time, datetime.time):
            when = datetime.datetime.combine(first.AcquisitionDate, first.AcquisitionTime)
    return ContributingEquipment(
        manufacturer=manufacturer, purpose_of_reference=dcm_codes.DCM.AcquisitionEquipment,
        manufacturer_model_name=first.get("ManufacturerModelName"),
        software_versions=first.get("SoftwareVersions"), device_serial_number=first.get("DeviceSerialNumber"),
        institution_name=first.get("InstitutionName"),
        institutional_department_name=first.get("InstitutionalDepartmentName"),
        institution_address=first.get("InstitutionAddress"), station_name=first.get("StationName"),
        contribution_datetime=when, contribution_description="Acquisition equipment of the source image(s)",
    )


def _equipment(p: Prepared, enc: list[str], charset: Any) -> list[Element]:
    """Contributing Equipment: the source's acquisition equipment when highdicom can describe it (an
    image with a Manufacturer), then highdicom itself; both dated `created`, as build_sr always did."""
    stamp = _dicom_time(DT(p.when))
    items = []
    acquisition = _acquisition_equipment(p.first)
    if acquisition is not None:
        if "ContributionDateTime" in acquisition:
            acquisition.ContributionDateTime = DT(p.when)
        items.append(pydicom_item(acquisition, charset))
    purpose = sequence(0x0040A170, [code_item(_PROCESSING_EQUIPMENT, tuple(enc))])
    library = [
        text(0x00080070, "LO", "Highdicom open-source contributors", enc),
        text(0x00081090, "LO", "highdicom", enc),
        text(0x00181020, "LO", highdicom_version, enc),
        text(0x0018A002, "DT", stamp, enc),
        text(0x0018A003, "ST", "Software library used to create this instance", enc),
        purpose,
    ]
    items.append(item(library, ordered=True))
    return [sequence(0x0018A001, items)]


def _predecessors(predecessor: Predecessor, enc: list[str]) -> Element:
    """Predecessor Documents Sequence naming the one SR this one replaces."""
    sop = item(
        [
            text(0x00081150, "UI", predecessor.sop_class_uid, enc),
            text(0x00081155, "UI", predecessor.sop_instance_uid, enc),
        ],
        ordered=True,
    )
    series = item(
        [sequence(0x00081199, [sop]), text(0x0020000E, "UI", predecessor.series_instance_uid, enc)], ordered=True
    )
    study = item(
        [sequence(0x00081115, [series]), text(0x0020000D, "UI", predecessor.study_instance_uid, enc)], ordered=True
    )
    return sequence(0x0040A360, [study])


@lru_cache(maxsize=64)
def copied_tags(sop_class_uid: str) -> tuple[int, ...]:
    """Tags highdicom copies from a source of `sop_class_uid` into the SR: every root-level attribute
    of the Patient and Study information entities' modules of its IOD (raises KeyError for a SOP Class
    highdicom does not know, as highdicom does)."""
    iod = get_sop_class_iod_map()[sop_class_uid]
    attributes = get_module_attribute_map()
    tags: list[int] = []
    for module in get_iod_module_map()[iod]:
        if module["ie"] not in ("Patient", "Study"):
            continue
        for attribute in attributes[module["key"]]:
            if len(attribute["path"]) == 0:
                tag = tag_for_keyword(str(attribute["keyword"]))
                if tag is None:
                    raise ValueError(f'No tag not found for keyword "{attribute["keyword"]}".')
                tags.append(tag)
    return tuple(dict.fromkeys(tags))


def _patient_and_study(first: Dataset, charset: Any) -> list[Element]:
    """The first source's patient and study attributes, element for element; absent Type 2 ones empty."""
    out = []
    copied = copied_tags(str(first.SOPClassUID))
    for tag in copied:
        if tag in first:
            out.append(pydicom_element(first[tag], charset))
    for keyword in PATIENT_STUDY_TYPE2:
        missing = tag_for_keyword(keyword)
        if missing is not None and missing not in first and missing in copied:
            out.append(element(missing, dictionary_VR(missing), b""))
    return out
