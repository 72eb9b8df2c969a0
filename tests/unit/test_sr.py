"""The results SR (edge_ai.report.sr): what PACS and the radiologist receive for each series."""

from __future__ import annotations

import datetime
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edge_ai.domain import Box, Finding, InferenceResult, InstanceScore
from edge_ai.report import codes
from edge_ai.report.sr import DeviceInfo, Predecessor, build_sr, sr_summary

DCIODVFY = "/usr/bin/dciodvfy"
needs_dciodvfy = pytest.mark.skipif(
    not Path(DCIODVFY).exists(), reason="dciodvfy (dicom3tools) not installed"
)

DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
MODEL, VERSION = "demo-chest-xr", "1.0.0"
DEVICE = DeviceInfo(ae_title="EDGE_AI", serial_number="SN-0001")
CREATED = datetime.datetime(2024, 3, 4, 5, 6, 7)


@dataclass(frozen=True)
class _Code:
    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class _Label:
    finding: _Code
    finding_site: _Code | None = None


@dataclass(frozen=True)
class _Package:
    name: str = MODEL
    version: str = VERSION
    labels: dict[str, _Label] = field(
        default_factory=lambda: {
            "finding": _Label(
                _Code("427359005", "SCT", "Solitary nodule of lung"),
                _Code("39607008", "SCT", "Lung structure"),
            )
        }
    )
    disclaimer: str | None = "Not for diagnostic use"


PACKAGE = _Package()


def _image(study: str, series: str, sop_class: str, modality: str, number: int, *, pixels: bool) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[series, str(number)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyID = "STUDY1"
    ds.AccessionNumber = "ACC0001"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.InstitutionName = "General Hospital"
    ds.Modality = modality
    ds.Manufacturer = "ACME"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if modality == "CT":
        ds.ImagePositionPatient = [0.0, 0.0, float(number) * 2.5]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 2.5
    if pixels:
        ds.PixelData = np.zeros((512, 512), dtype=np.uint16).tobytes()
    return ds


@pytest.fixture
def dx() -> list[Dataset]:
    """One DX For Presentation image, 512x512 MONOCHROME2."""
    return [
        _image(
            generate_uid(entropy_srcs=["dx-study"]),
            generate_uid(entropy_srcs=["dx-series"]),
            DX_CLASS,
            "DX",
            1,
            pixels=False,
        )
    ]


@pytest.fixture
def ct() -> list[Dataset]:
    """A 5-slice CT series."""
    study, series = generate_uid(entropy_srcs=["ct-study"]), generate_uid(entropy_srcs=["ct-series"])
    return [_image(study, series, CT_CLASS, "CT", n, pixels=False) for n in range(1, 6)]


def _result(sources: list[Dataset], *, positive: bool, p: float, on: int = 0) -> InferenceResult:
    target = sources[on]
    findings = (
        (Finding("finding", p, target.SOPInstanceUID, target.SOPClassUID, Box(100.0, 120.0, 180.0, 200.0)),)
        if positive
        else ()
    )
    scores = tuple(InstanceScore(s.SOPInstanceUID, p, Box(0.0, 0.0, 1.0, 1.0)) for s in sources)
    return InferenceResult(MODEL, VERSION, "onnxruntime", p, positive, 0.5, findings, scores)


def _build(sources: list[Dataset], result: InferenceResult, **kw: object) -> Dataset:
    kw.setdefault("created", CREATED)
    return build_sr(sources, result, PACKAGE, DEVICE, **kw)  # type: ignore[arg-type]


def _dciodvfy(ds: Dataset, tmp_path: Path) -> tuple[list[str], list[str]]:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def _content_codes(item: Dataset) -> list[tuple[str, str]]:
    """(concept name code value, value code value) for every CODE item in the tree."""
    out = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "CODE":
            out.append((child.ConceptNameCodeSequence[0].CodeValue, child.ConceptCodeSequence[0].CodeValue))
        out.extend(_content_codes(child))
    return out


def _content_texts(item: Dataset) -> list[str]:
    out = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            out.append(str(child.TextValue))
        out.extend(_content_texts(child))
    return out


# --- validity ----------------------------------------------------------------------------------


@needs_dciodvfy
def test_positive_dx_sr_validates_clean(dx: list[Dataset], tmp_path: Path) -> None:
    """A positive chest X-ray result is a valid DICOM object PACS will accept (dciodvfy: 0 errors)."""
    errors, _ = _dciodvfy(_build(dx, _result(dx, positive=True, p=0.87)), tmp_path)
    assert errors == []


@needs_dciodvfy
def test_negative_dx_sr_validates_clean(dx: list[Dataset], tmp_path: Path) -> None:
    """A negative result is also a valid SR (dciodvfy: 0 errors)."""
    errors, _ = _dciodvfy(_build(dx, _result(dx, positive=False, p=0.12)), tmp_path)
    assert errors == []


@needs_dciodvfy
def test_positive_ct_sr_validates_clean(ct: list[Dataset], tmp_path: Path) -> None:
    """A CT series with a finding on slice 3 gives a valid SR (dciodvfy: 0 errors)."""
    errors, _ = _dciodvfy(_build(ct, _result(ct, positive=True, p=0.91, on=2)), tmp_path)
    assert errors == []


@needs_dciodvfy
def test_sr_with_predecessor_validates_clean(dx: list[Dataset], tmp_path: Path) -> None:
    """A replacement SR (series reopened) naming its predecessor is valid (dciodvfy: 0 errors)."""
    first = _build(dx, _result(dx, positive=False, p=0.2))
    pred = Predecessor(first.SOPInstanceUID, first.SeriesInstanceUID, first.StudyInstanceUID)
    errors, _ = _dciodvfy(_build(dx, _result(dx, positive=True, p=0.8), predecessor=pred), tmp_path)
    assert errors == []


@needs_dciodvfy
def test_sources_missing_type2_attributes_still_validate(dx: list[Dataset], tmp_path: Path) -> None:
    """A modality that leaves out birth date, accession and referrer still gets a valid SR back."""
    for keyword in ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName", "InstitutionName"):
        delattr(dx[0], keyword)
    sr = _build(dx, _result(dx, positive=True, p=0.7))
    errors, _ = _dciodvfy(sr, tmp_path)
    assert errors == []
    assert sr.PatientBirthDate == "" and "PatientBirthDate" not in dx[0]


# --- content PACS relies on ---------------------------------------------------------------------


def test_evidence_lists_every_source_instance(ct: list[Dataset]) -> None:
    """Every CT slice is listed as evidence, including the four without a finding."""
    sr = _build(ct, _result(ct, positive=True, p=0.9, on=2))
    assert sr_summary(sr)["evidence"] == sorted(s.SOPInstanceUID for s in ct)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == ct[0].StudyInstanceUID


def test_patient_and_study_copied_from_sources(dx: list[Dataset]) -> None:
    """The SR files under the same patient and study as the images in PACS."""
    sr = _build(dx, _result(dx, positive=True, p=0.9))
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDate",
        "StudyTime",
        "InstitutionName",
    ):
        assert sr[keyword].value == dx[0][keyword].value, keyword


def test_sr_is_a_new_sr_series_naming_the_model(dx: list[Dataset]) -> None:
    """The result shows up as its own SR series (9901) whose description names the model and version."""
    sr = _build(dx, _result(dx, positive=True, p=0.9))
    assert sr.Modality == "SR"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.SeriesInstanceUID != dx[0].SeriesInstanceUID
    assert sr.SeriesNumber == 9901
    assert MODEL in sr.SeriesDescription and VERSION in sr.SeriesDescription
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("PARTIAL", "UNVERIFIED")


def test_negative_result_states_no_finding_explicitly(dx: list[Dataset]) -> None:
    """A negative study says 'finding: Absent' in coded form, not just an empty report."""
    sr = _build(dx, _result(dx, positive=False, p=0.12))
    summary = sr_summary(sr)
    assert summary["positive"] is False
    assert summary["findings"] == []
    assert summary["probability"] == pytest.approx(0.12)
    assert ("427359005", codes.ABSENT.value) in _content_codes(sr)
    assert ("427359005", codes.PRESENT.value) not in _content_codes(sr)


def test_disclaimer_is_in_content_and_series_description(dx: list[Dataset]) -> None:
    """The radiologist sees 'Not for diagnostic use' in the report and in the series list."""
    sr = _build(dx, _result(dx, positive=True, p=0.9))
    assert "Not for diagnostic use" in _content_texts(sr)
    assert "Not for diagnostic use" in sr.SeriesDescription
    assert sr_summary(sr)["disclaimer"] == "Not for diagnostic use"


def test_algorithm_and_device_observer_identified(dx: list[Dataset]) -> None:
    """The SR names the algorithm (name, version, threshold, runtime) and this node as observer."""
    sr = _build(dx, _result(dx, positive=True, p=0.9))
    texts = _content_texts(sr)
    assert {MODEL, VERSION, "threshold=0.5000", "runtime=onnxruntime", "EDGE_AI"} <= set(texts)
    assert sr_summary(sr)["model"] == (MODEL, VERSION)
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == codes.PRIVATE_SCHEME


def test_sr_summary_round_trips_a_ct_finding(ct: list[Dataset]) -> None:
    """A reader gets back the finding, its probability, the slice it is on and the box centre."""
    summary = sr_summary(_build(ct, _result(ct, positive=True, p=0.91234567, on=2)))
    assert summary["positive"] is True
    assert summary["probability"] == pytest.approx(0.9123)
    assert summary["finding"] == {"value": "427359005", "scheme": "SCT", "meaning": "Solitary nodule of lung"}
    [finding] = summary["findings"]
    assert finding["sop_instance_uid"] == ct[2].SOPInstanceUID
    assert finding["centre"] == pytest.approx((140.0, 160.0))
    assert finding["probability"] == pytest.approx(0.9123)
    assert finding["graphic_type"] == "POLYLINE"


def test_built_from_headers_read_from_disk(ct: list[Dataset], tmp_path: Path) -> None:
    """Works on spooled files read without pixel data, and survives a write/read as PACS would store it."""
    paths = []
    for i, ds in enumerate(ct):
        full = _image(ds.StudyInstanceUID, ds.SeriesInstanceUID, CT_CLASS, "CT", i + 1, pixels=True)
        paths.append(tmp_path / f"{i}.dcm")
        full.save_as(paths[-1], enforce_file_format=True)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    sr = _build(headers, _result(headers, positive=True, p=0.8, on=2))
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    summary = sr_summary(pydicom.dcmread(tmp_path / "sr.dcm"))
    assert summary["findings"][0]["sop_instance_uid"] == ct[2].SOPInstanceUID
    assert len(summary["evidence"]) == 5


# --- deterministic UIDs ---------------------------------------------------------------------------


def test_same_result_gives_same_uids(ct: list[Dataset]) -> None:
    """Re-processing an unchanged series never makes a second object in PACS (same UIDs, even later)."""
    a = _build(ct, _result(ct, positive=True, p=0.9, on=2))
    b = _build(
        list(reversed(ct)), _result(ct, positive=True, p=0.9, on=2), created=CREATED + datetime.timedelta(1)
    )
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    assert a.ContentSequence == b.ContentSequence


def test_changed_probability_gives_new_instance_in_same_series(dx: list[Dataset]) -> None:
    """A changed result is a new SR instance (never the same UID for different content), same SR series."""
    a = _build(dx, _result(dx, positive=True, p=0.90))
    b = _build(dx, _result(dx, positive=True, p=0.91))
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID


def test_probability_noise_below_reported_precision_keeps_uid(dx: list[Dataset]) -> None:
    """Noise below the 4 reported decimals (e.g. GPU vs CPU) does not create a new object."""
    a = _build(dx, _result(dx, positive=True, p=0.9000001))
    b = _build(dx, _result(dx, positive=True, p=0.9000004))
    assert a.SOPInstanceUID == b.SOPInstanceUID


def test_late_instance_gives_new_instance_uid(ct: list[Dataset]) -> None:
    """A series reopened by a late slice yields a new SR instance in the same SR series."""
    before = _build(ct[:4], _result(ct[:4], positive=True, p=0.9, on=2))
    after = _build(ct, _result(ct, positive=True, p=0.9, on=2))
    assert before.SeriesInstanceUID == after.SeriesInstanceUID
    assert before.SOPInstanceUID != after.SOPInstanceUID


def test_reopened_series_names_its_predecessor(ct: list[Dataset]) -> None:
    """After a late slice, the new SR names the earlier one in Predecessor Documents Sequence."""
    first = _build(ct[:4], _result(ct[:4], positive=True, p=0.9, on=2))
    pred = Predecessor(first.SOPInstanceUID, first.SeriesInstanceUID, first.StudyInstanceUID)
    second = _build(ct, _result(ct, positive=True, p=0.9, on=2), predecessor=pred)
    assert sr_summary(second)["predecessors"] == [first.SOPInstanceUID]
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID


def test_reprocessing_unchanged_result_with_predecessor_keeps_uid(dx: list[Dataset]) -> None:
    """Re-processing an unchanged series that names the earlier SR as predecessor is still one object."""
    first = _build(dx, _result(dx, positive=True, p=0.9))
    pred = Predecessor(first.SOPInstanceUID, first.SeriesInstanceUID, first.StudyInstanceUID)
    again = _build(dx, _result(dx, positive=True, p=0.9), predecessor=pred)
    assert again.SOPInstanceUID == first.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in again  # never its own predecessor


def test_changed_result_on_same_instances_names_predecessor(dx: list[Dataset]) -> None:
    """A different result for the same images is a new SR that names the one it replaces."""
    first = _build(dx, _result(dx, positive=False, p=0.3))
    pred = Predecessor(first.SOPInstanceUID, first.SeriesInstanceUID, first.StudyInstanceUID)
    second = _build(dx, _result(dx, positive=True, p=0.6), predecessor=pred)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert sr_summary(second)["predecessors"] == [first.SOPInstanceUID]


def test_other_model_version_gets_its_own_series(dx: list[Dataset]) -> None:
    """Each model version's results live in their own SR series."""
    a = _build(dx, _result(dx, positive=True, p=0.9))
    result = replace(_result(dx, positive=True, p=0.9), model_version="2.0.0")
    b = build_sr(dx, result, replace(PACKAGE, version="2.0.0"), DEVICE, created=CREATED)
    assert a.SeriesInstanceUID != b.SeriesInstanceUID


# --- wrong input ---------------------------------------------------------------------------------


def test_finding_on_unknown_instance_is_rejected(dx: list[Dataset], ct: list[Dataset]) -> None:
    """A finding that points at an image not in the series is a programming error, not a silent SR."""
    with pytest.raises(ValueError, match="not among the sources"):
        _build(dx, _result(ct, positive=True, p=0.9))


def test_sources_from_two_series_are_rejected(dx: list[Dataset], ct: list[Dataset]) -> None:
    """One SR covers exactly one source series."""
    with pytest.raises(ValueError, match="one series"):
        _build(dx + ct, _result(dx, positive=False, p=0.1))


def test_arrival_order_does_not_change_the_document(ct: list[Dataset]) -> None:
    """Instances arriving in another order give a byte-identical SR (same evidence order)."""
    a = _build(ct, _result(ct, positive=True, p=0.9, on=2))
    b = _build(list(reversed(ct)), _result(ct, positive=True, p=0.9, on=2))
    assert a.CurrentRequestedProcedureEvidenceSequence == b.CurrentRequestedProcedureEvidenceSequence
    assert a == b
