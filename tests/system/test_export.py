"""De-identified export from a running node: PS3.15 Basic Profile with modified dates, held against
the standard's own table (not the library's), and no identifying byte anywhere in the export."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import needs_dcmtk
from peers import storescu, wait_for
from pydicom import Dataset
from pydicom.sequence import Sequence

from edge_ai import phantoms
from edge_ai.config import MODELS_DIR

pytestmark = [needs_dcmtk, pytest.mark.slow]

# DICOM PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes), the rows a CT/DX
# image typically carries: keyword, Basic Profile action, Rtn. Long. Modif. Dates Opt. ("C" or "").
TABLE_E1_1 = [
    ("AccessionNumber", "Z", ""), ("AcquisitionComments", "X", ""), ("AcquisitionContextSequence", "X/Z", ""),
    ("AcquisitionDate", "X/Z", "C"), ("AcquisitionDateTime", "X/Z/D", "C"), ("AcquisitionTime", "X/Z", "C"),
    ("AcquisitionDeviceProcessingDescription", "X/D", ""), ("AdditionalPatientHistory", "X", ""),
    ("ContentDate", "Z/D", "C"), ("ContentTime", "Z/D", "C"), ("DeviceSerialNumber", "X/Z/D", ""),
    ("FrameOfReferenceUID", "U", ""), ("ImageComments", "X", ""), ("InstitutionAddress", "X", ""),
    ("InstitutionName", "X/Z/D", ""), ("InstitutionalDepartmentName", "X", ""),
    ("MediaStorageSOPInstanceUID", "U", ""), ("NameOfPhysiciansReadingStudy", "X", ""),
    ("OperatorsName", "X/Z/D", ""), ("OtherPatientIDs", "X", ""), ("OtherPatientNames", "X", ""),
    ("PatientAddress", "X", ""), ("PatientAge", "X", ""), ("PatientBirthDate", "Z", ""),
    ("PatientBirthTime", "X", ""), ("PatientComments", "X", ""), ("PatientID", "Z", ""),
    ("PatientName", "Z", ""), ("PatientSex", "Z", ""), ("PatientSize", "X", ""),
    ("PatientTelephoneNumbers", "X", ""), ("PatientWeight", "X", ""), ("PerformingPhysicianName", "X", ""),
    ("PhysiciansOfRecord", "X", ""), ("ProtocolName", "X/D", ""), ("ReferencedImageSequence", "X/Z/U*", ""),
    ("ReferencedPatientSequence", "X", ""), ("ReferencedStudySequence", "X/Z", ""),
    ("ReferringPhysicianName", "Z", ""), ("RequestAttributesSequence", "X", ""),
    ("SeriesDate", "X/D", "C"), ("SeriesDescription", "X", ""), ("SeriesInstanceUID", "U", ""),
    ("SeriesTime", "X/D", "C"), ("SOPInstanceUID", "U", ""), ("StationName", "X/Z/D", ""),
    ("StudyDate", "Z", "C"), ("StudyDescription", "X", ""), ("StudyID", "Z", ""),
    ("StudyInstanceUID", "U", ""), ("StudyTime", "Z", "C"),
]
ADDED_BY_PROFILE = {"PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                    "LongitudinalTemporalInformationModified"}
IDENTIFYING = ["DOE^JANE^Q", "Jane", "JANE", "MRN-4711-XYZ", "ACC98765432", "ACC12345678", "19610423", "20240311",
               "20240401", "St Elsewhere General", "1 Main Street Springfield", "HOUSE^GREGORY", "NURSE^RATCHED",
               "WHO^JOHN", "XR-ROOM-7", "SN-00998877", "STUDY-5521", "OTHER-ID-5566", "42 Wallaby Way",
               "Radiology West", "REQ-7788", "secret-private-value", "bed 12", "063Y", "Protocol Jane"]


def _rich(seed: int, study: str, date: str, series_uid: str, accession: str, burned: str = "NO") -> Dataset:
    pixels, _ = phantoms.chest_xray(np.random.default_rng(seed), size=256, lesion=seed % 2 == 0)
    ds = phantoms.dx_dataset(pixels, patient_id="MRN-4711-XYZ", patient_name="DOE^JANE^Q",
                             study_instance_uid=study, series_instance_uid=series_uid, accession_number=accession,
                             study_date=date, study_time="101500", instance_number=seed % 10 + 1)
    ds.BurnedInAnnotation = burned
    ds.PatientBirthDate = "19610423"
    ds.PatientAge, ds.PatientWeight, ds.PatientSex = "063Y", "71.5", "F"
    ds.PatientAddress, ds.OtherPatientIDs = "42 Wallaby Way Sydney", "OTHER-ID-5566"
    ds.InstitutionName, ds.InstitutionAddress = "St Elsewhere General Hospital", "1 Main Street Springfield"
    ds.InstitutionalDepartmentName = "Radiology West"
    ds.ReferringPhysicianName, ds.OperatorsName, ds.PerformingPhysicianName = \
        "HOUSE^GREGORY", "NURSE^RATCHED", "WHO^JOHN"
    ds.StationName, ds.DeviceSerialNumber, ds.StudyID = "XR-ROOM-7", "SN-00998877", "STUDY-5521"
    ds.StudyDescription, ds.SeriesDescription = "CHEST PA for Jane", "PA erect Jane"
    ds.ProtocolName, ds.ImageComments = "Protocol Jane", "Patient Jane Doe, bed 12"
    ds.AcquisitionDate, ds.AcquisitionTime, ds.AcquisitionDateTime = date, "101501", date + "101501.000000"
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "REQ-7788", "REQ-7788-1"
    ds.RequestAttributesSequence = Sequence([request])
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
    ds.ReferencedStudySequence = Sequence([ref])
    block = ds.private_block(0x0009, "ACME HOSPITAL", create=True)
    block.add_new(0x01, "LO", "secret-private-value")
    return ds


def _write(folder: Path, datasets: list[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.dcm" for i in range(len(datasets))]
    for ds, path in zip(datasets, paths, strict=True):
        phantoms.write_dataset(ds, path)
    return paths


def _source_uids(ds: Dataset) -> set[str]:
    found = {str(ds.file_meta.MediaStorageSOPInstanceUID)}
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value and pydicom.uid.UID(str(elem.value)).name == str(elem.value):
            found.add(str(elem.value))
    return found


def _walk_private(ds: Dataset) -> list[str]:
    return [str(e.tag) for e in ds.iterall() if e.tag.is_private]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from peers import NodeProcess

    tmp = tmp_path_factory.mktemp("export")
    node = NodeProcess(tmp / "node", extra={
        "models": [{"path": str(MODELS_DIR / "demo_chest_xr")}],
        "routing": [{"name": "chest", "match": {"Modality": ["DX"]}, "model": "demo-chest-xr"}],
    }).start()
    try:
        study_a, study_b = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        series_a, series_b = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        sources = [_rich(1, study_a, "20240311", series_a, "ACC98765432"),
                   _rich(2, study_a, "20240311", series_a, "ACC98765432"),
                   _rich(3, study_b, "20240401", series_b, "ACC12345678"),
                   _rich(4, study_b, "20240401", series_b, "ACC12345678", burned="YES")]
        files = _write(tmp / "sources", sources)
        assert storescu(node.port, files).returncode == 0
        assert wait_for(lambda: "delivered=2," in node.cli("status").stdout, 90), node.log()
        jobs = {e["series_uid"]: e["job"] for e in node.audit_events() if e["event"] == "job.state"}
        disagree = node.cli("feedback", str(jobs[series_b]), "--disagree", "--comment", "Jane Doe looks fine")
        assert disagree.returncode == 0, disagree.stderr
        runs = {}
        for name, reason in (("first", "all"), ("second", "all"), ("disagreed", "disagreement")):
            out = node.cli("export", "--out", str(tmp / name), "--reason", reason)
            assert out.returncode == 0, out.stderr
            runs[name] = tmp / name
        bad = [node.cli("export", "--out", str(tmp / "x"), "--reason", "nonsense"),
               node.cli("export", "--out", str(tmp / "y"), "--since", "last tuesday"),
               node.cli("export", "--out", str(tmp / "first"))]
        assert wait_for(lambda: sum(e["event"] == "export.done" for e in node.audit_events()) == 3, 15)
        return {"node": node, "sources": [pydicom.dcmread(f) for f in files], "runs": runs, "bad": bad,
                "events": node.audit_events()}
    finally:
        node.stop()


def _exported_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


def test_every_file_follows_the_basic_profile_table(exported: dict[str, Any]) -> None:
    """Each exported image holds the PS3.15 E.1-1 actions: X gone, Z/D changed, U replaced, dates shifted."""
    sources = {str(s.SOPInstanceUID): s for s in exported["sources"]}
    files = _exported_files(exported["runs"]["first"])
    assert len(files) == 3  # the burned-in image is left out
    shifts = set()
    for path in files:
        out = pydicom.dcmread(path)
        src = next(s for s in sources.values() if int(s.InstanceNumber) == int(out.InstanceNumber))
        for keyword, action, dates in TABLE_E1_1:
            original = src.file_meta.get(keyword) if keyword.startswith("MediaStorage") else src.get(keyword)
            got = out.file_meta.get(keyword) if keyword.startswith("MediaStorage") else out.get(keyword)
            if original is None or original == "":
                continue
            if dates == "C" and keyword.endswith("Time") and not keyword.endswith("DateTime"):
                assert got == original, keyword  # times of day are kept (dates move by whole days)
            elif dates == "C":
                assert got not in (None, "") and got != original, keyword
                delta = dt.date.fromisoformat(str(original)[:8]) - dt.date.fromisoformat(str(got)[:8])
                shifts.add(delta.days)
            elif action == "X":
                assert keyword not in out, keyword
            elif action == "U":
                assert got is not None and got != original and str(got).startswith("2.25."), keyword
            elif keyword.endswith("Sequence"):
                assert got is None or all(not str(e.value) or e.value != o.value
                                          for item, oitem in zip(got, original, strict=False)
                                          for e, o in zip(item, oitem, strict=False)), keyword
            else:  # Z, D and their X/ combinations: gone, empty or a dummy, never the original
                assert got is None or str(got) != str(original), keyword
        retained = {e.keyword for e in src} | ADDED_BY_PROFILE
        assert {e.keyword for e in out} <= retained  # nothing new beyond what the profile adds
        assert _walk_private(out) == []
        assert out.PatientIdentityRemoved == "YES"
        assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
        assert all(c.CodingSchemeDesignator == "DCM" for c in out.DeidentificationMethodCodeSequence)
        assert out.PatientID == out.PatientName and str(out.PatientID).startswith("ANON")
        assert np.array_equal(out.pixel_array, src.pixel_array)  # pixels untouched
    assert len(shifts) == 1 and 1 <= shifts.pop() <= 3650  # one shift for the patient: intervals kept


def test_nothing_identifying_anywhere_in_the_export(exported: dict[str, Any]) -> None:
    """No byte of any exported file or of the manifest holds a name, ID, date, UID or institution of the source."""
    values = set(IDENTIFYING)
    for src in exported["sources"]:
        values |= _source_uids(src)
    for name in ("first", "disagreed"):
        folder = exported["runs"][name]
        for path in [*folder.rglob("*.dcm"), folder / "manifest.jsonl"]:
            blob = path.read_bytes()
            leaked = sorted(v for v in values if v.encode() in blob)
            assert not leaked, (path.name, leaked)
            assert all(len(part) <= 29 for part in path.relative_to(folder).parts)  # hashed names
    events = json.dumps([e for e in exported["events"] if e["event"] in ("export.done", "feedback.received")])
    assert not [v for v in IDENTIFYING if v in events]


def test_manifest_lines_and_stable_pseudonyms(exported: dict[str, Any]) -> None:
    """One manifest line per series with output, drift and verdict; the same source keeps its pseudonym."""
    first = [json.loads(ln) for ln in (exported["runs"]["first"] / "manifest.jsonl").read_text().splitlines()]
    second = [json.loads(ln) for ln in (exported["runs"]["second"] / "manifest.jsonl").read_text().splitlines()]
    disagreed = [json.loads(ln) for ln in (exported["runs"]["disagreed"] / "manifest.jsonl").read_text().splitlines()]
    assert len(first) == 2 and first == second
    assert len({m["patient_id"] for m in first}) == 1
    assert sorted(_exported_files(exported["runs"]["first"])) != [] and [
        p.relative_to(exported["runs"]["first"]) for p in _exported_files(exported["runs"]["first"])
    ] == [p.relative_to(exported["runs"]["second"]) for p in _exported_files(exported["runs"]["second"])]
    by_burned = {m["burned_in_left_out"]: m for m in first}
    assert set(by_burned) == {0, 1}
    b = by_burned[1]
    assert [r["model"] for r in b["results"]] == ["demo-chest-xr"] and 0 <= b["results"][0]["probability"] <= 1
    assert b["feedback"] == [{"agree": False, "findings": []}]
    assert b["label"] is (not b["results"][0]["positive"])
    assert b["drift"] and b["drift"][0]["model"] == "demo-chest-xr"
    assert [m["series_uid"] for m in disagreed] == [b["series_uid"]] and disagreed[0]["reasons"] == ["disagreement"]
    done = [e for e in exported["events"] if e["event"] == "export.done"]
    assert done[0]["series"] == 2 and done[0]["instances"] == 3 and done[0]["burned_in_left_out"] == 1


def test_bad_arguments_exit_2_with_a_message(exported: dict[str, Any]) -> None:
    """An unknown reason, an unreadable time or a non-empty folder: exit 2 and one line saying why."""
    for result in exported["bad"]:
        assert result.returncode == 2 and result.stderr.startswith("edge-ai: "), result
