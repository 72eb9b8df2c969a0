"""De-identification for the retraining export (SPEC "Export"; DICOM PS3.15 Annex E).

The attribute actions of the Basic Application Level Confidentiality Profile (Table E.1-1: X, Z,
D, U, ...) are done by dicom-anonymizer (its table of the 2026c standard). On top of it:

- Retain Longitudinal Temporal Information with Modified Dates Option: every date (DA, and the
  date part of DT) is shifted by a whole number of days that depends only on the patient, so the
  intervals between a patient's studies survive; times of day are kept.
- UIDs and Patient ID are replaced by HMAC-SHA256 pseudonyms keyed from `export.hmac_key_file`:
  the same source value gives the same pseudonym in every export with the same key, and nothing
  without the key links a pseudonym back to its source. Patient's Name becomes the patient's
  pseudonym.
- Private attributes are removed; any name (PN) or non-standard UID left in a nested sequence is
  cleaned as well; Patient Identity Removed is YES and the De-identification Method (Code Sequence,
  CID 7050: 113100, 113107) says what was done.
- An image whose Burned In Annotation is not NO (or is missing) is left out: its pixels may carry
  a name no attribute action can remove.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

KEY_BYTES = 32
METHOD = "PS3.15 Basic Profile; Rtn. Long. Modif. Dates; HMAC pseudonyms"
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
# Table E.1-1 attributes with Rtn. Long. Modif. Dates Opt. "C" (that a CT, DX or CR image carries)
MODIFIED_DATES = (
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "OverlayDate", "CurveDate",
    "AcquisitionDateTime", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "OverlayTime",
    "CurveTime", "PerformedProcedureStepStartDate", "PerformedProcedureStepEndDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepEndTime", "InstanceCoercionDateTime",
    "StartAcquisitionDateTime", "EndAcquisitionDateTime", "FrameOriginTimestamp",
    "InstanceCreationDate", "InstanceCreationTime",  # listed (X/D) since the 2024 editions of the table
)
_DATE_VRS = ("DA", "DT")
_MAX_SHIFT_DAYS = 3650


class BurnedInAnnotation(Exception):
    """The image may carry identifying text in its pixels; it is left out of the export."""


def load_or_create_key(path: Path) -> bytes:
    """The HMAC key at `path`, made (32 random bytes, 0600) when there is none yet."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"{path}: an export HMAC key needs at least 16 bytes")
    return key


class Pseudonyms:
    """Keyed, consistent replacements for identifiers."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A 2.25 UID (PS3.5 B.2) from 128 bits of the HMAC: at most 44 characters."""
        return "2.25." + str(int.from_bytes(self._mac("uid", value.strip())[:16], "big") or 1)

    def patient_id(self, value: str) -> str:
        return "ANON" + self._mac("patient", value.strip()).hex()[:16].upper()

    def date_shift(self, patient_id: str) -> dt.timedelta:
        """Days every date of this patient moves back: 1 .. 3650, fixed per patient and key."""
        days = int.from_bytes(self._mac("dates", patient_id.strip())[:4], "big") % _MAX_SHIFT_DAYS + 1
        return dt.timedelta(days=-days)

    def file_name(self, pseudonymous_uid: str) -> str:
        """A file or folder name: a hash of the pseudonym, never the raw UID."""
        return hashlib.sha256(pseudonymous_uid.encode()).hexdigest()[:24]


class Deidentifier:
    """One export's de-identification: `apply` changes a dataset in place."""

    def __init__(self, pseudonyms: Pseudonyms) -> None:
        self.p = pseudonyms

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify `ds` (a whole Part-10 dataset, pixels included) in place and return it.

        Raises:
            BurnedInAnnotation: Burned In Annotation is not NO.
        """
        from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, initialize_actions

        if str(ds.get("BurnedInAnnotation", "")).strip().upper() != "NO":
            raise BurnedInAnnotation(str(ds.get("BurnedInAnnotation", "missing")) or "empty")
        source_pid = str(ds.get("PatientID", ""))
        shift = self.p.date_shift(source_pid)
        shifted: set[tuple[int, BaseTag]] = set()

        def uid_action(dataset: Dataset, tag: Any) -> None:
            element = dataset.get(tag)
            if element is not None and element.VR == "UI" and element.value:
                _set_uid(element, self.p.uid)

        def date_action(dataset: Dataset, tag: Any) -> None:
            element = dataset.get(tag)
            if element is not None and element.VR in _DATE_VRS:
                _shift(element, shift)
                shifted.add((id(dataset), element.tag))

        def keep(dataset: Dataset, tag: Any) -> None:
            """Times of day stay (only dates move under the Modified Dates option)."""

        base = initialize_actions("dicomfields_2026c")
        rules: dict[Any, Any] = {t: uid_action for t, action in base.items()
                                 if getattr(action, "__name__", "") == "replace_UID"}
        for keyword in MODIFIED_DATES:
            tag = Tag(keyword)
            rules[(tag.group, tag.element)] = keep if keyword.endswith("Time") else date_action
        anonymize_dataset(ds, extra_anonymization_rules=rules, delete_private_tags=True,
                          base_rules_gen=lambda: base)
        ds.remove_private_tags()  # nested ones too
        _clean_nested(ds, self.p.uid, shift, shifted)
        ds.PatientID = self.p.patient_id(source_pid)
        ds.PatientName = ds.PatientID
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        ds.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in METHOD_CODES])
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def _is_standard_uid(value: str) -> bool:
    """A UID the standard defines (SOP classes, transfer syntaxes, coding schemes): not identifying."""
    return UID(value).name != value


def _set_uid(element: DataElement, pseudonym: Any) -> None:
    values = element.value if isinstance(element.value, list | tuple) or element.VM > 1 else [element.value]
    new = [v if not v or _is_standard_uid(str(v)) else pseudonym(str(v)) for v in values]
    element.value = new if element.VM > 1 else new[0]


def _shift(element: DataElement, shift: dt.timedelta) -> None:
    """Move a DA or DT value (each of several values) by `shift`; an unparseable one is emptied."""
    if not element.value:
        return
    values = list(element.value) if element.VM > 1 else [element.value]
    out = []
    for value in values:
        text = str(value).strip()
        try:
            day = dt.datetime.strptime(text[:8], "%Y%m%d").date() + shift
            out.append(day.strftime("%Y%m%d") + (text[8:] if element.VR == "DT" else ""))
        except ValueError:
            out.append("")
    element.value = out if element.VM > 1 else out[0]


def _clean_nested(ds: Dataset, pseudonym: Any, shift: dt.timedelta, shifted: set[tuple[int, BaseTag]]) -> None:
    """What the profile's tag table cannot reach: UIDs and names at any depth, dates not yet moved."""
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                _clean_nested(item, pseudonym, shift, shifted)
        elif element.VR == "UI" and element.value and element.tag != Tag("SOPClassUID"):
            _set_uid(element, pseudonym)
        elif element.VR == "PN" and element.tag != Tag("PatientName"):
            element.value = ""
        elif element.VR in _DATE_VRS and (id(ds), element.tag) not in shifted:
            if str(element.value).startswith("00010101"):  # the library's dummy for an X/Z date
                del ds[element.tag]
            else:
                _shift(element, shift)
