"""The whole path with real peers: DCMTK storescu as the modality, the node as a process, Orthanc as PACS."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import needs_dciodvfy, needs_dcmtk, needs_orthanc
from peers import Orthanc, dciodvfy_errors, dcmtk, storescu, wait_for

from edge_ai import phantoms
from edge_ai.report.sr import sr_summary

pytestmark = [pytest.mark.integration, needs_dcmtk]


def _write(datasets: list[pydicom.Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:04d}.dcm"
        phantoms.write_dataset(ds, path)
        paths.append(path)
    return paths


def _results(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm")) if folder.exists() else []


def test_echo_succeeds_on_default_ae(node_factory: Any) -> None:
    """A modality's C-ECHO to AE EDGE_AI is answered with Success."""
    node = node_factory().start()
    out = dcmtk("echoscu", "-aec", "EDGE_AI", "127.0.0.1", str(node.port))
    assert out.returncode == 0, out.stderr


def test_echo_to_wrong_called_ae_is_rejected(node_factory: Any) -> None:
    """An association addressed to another AE title is refused and audited."""
    node = node_factory().start()
    out = dcmtk("echoscu", "-aec", "SOMEONE_ELSE", "127.0.0.1", str(node.port))
    assert out.returncode != 0
    assert wait_for(lambda: any(e["event"] == "association.rejected" for e in node.audit_events()), 5)


@needs_dciodvfy
def test_dx_gives_sr_in_results_folder(node_factory: Any, tmp_path: Path) -> None:
    """A DX pushed by storescu comes back as a valid SR in the default results folder."""
    node = node_factory().start()
    ds, _ = phantoms.dx_case(np.random.default_rng(7), lesion=True)
    files = _write([ds], tmp_path / "dx")
    sent = time.monotonic()
    out = storescu(node.port, files)
    assert out.returncode == 0, out.stderr
    results = wait_for(lambda: _results(node.results), 30)
    elapsed = time.monotonic() - sent
    assert len(results) == 1, node.log()
    assert dciodvfy_errors(results[0]) == []
    sr = pydicom.dcmread(results[0])
    assert sr.PatientID == ds.PatientID
    assert sr.StudyInstanceUID == ds.StudyInstanceUID
    assert sr.SeriesInstanceUID != ds.SeriesInstanceUID
    print(f"DX time to SR in folder: {elapsed:.3f} s")


def _sr_by_source_series(pacs: Orthanc) -> dict[str, pydicom.Dataset]:
    out = {}
    for instance in pacs.instances_of_modality("SR"):
        sr = pydicom.dcmread(io.BytesIO(pacs.file(instance)))
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        out[str(evidence.SeriesInstanceUID)] = sr
    return out


def _evidence_uids(sr: pydicom.Dataset) -> set[str]:
    return {
        str(item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


@needs_orthanc
@needs_dciodvfy
def test_three_studies_reach_orthanc_as_valid_srs(node_factory: Any, orthanc: Orthanc, tmp_path: Path) -> None:
    """DX with a lesion, DX without, and a 40-slice CT each come back to the PACS as a correct, valid SR."""
    node = node_factory(destinations=[orthanc.destination()]).start()
    rng = np.random.default_rng(2026)
    dx_pos, dx_pos_truth = phantoms.dx_case(rng, lesion=True, patient_id="EDGE-P1")
    dx_neg, _ = phantoms.dx_case(rng, lesion=False, patient_id="EDGE-P2")
    ct, ct_truth = phantoms.ct_case(rng, slices=40, lesion=True, patient_id="EDGE-P3")
    cases = {"dx_pos": [dx_pos], "dx_neg": [dx_neg], "ct": ct}
    for name, datasets in cases.items():
        out = storescu(node.port, _write(datasets, tmp_path / name))
        assert out.returncode == 0, out.stderr

    srs = wait_for(lambda: len(_sr_by_source_series(orthanc)) >= 3 and _sr_by_source_series(orthanc), 90)
    assert srs and len(srs) == 3, node.log()
    for name, datasets in cases.items():
        sr = srs[str(datasets[0].SeriesInstanceUID)]
        assert sr.PatientID == datasets[0].PatientID, name
        assert sr.StudyInstanceUID == datasets[0].StudyInstanceUID, name
        assert _evidence_uids(sr) == {str(d.SOPInstanceUID) for d in datasets}, name
        path = tmp_path / f"{name}-sr.dcm"
        sr.save_as(path)
        assert dciodvfy_errors(path) == [], name

    pos = sr_summary(srs[str(dx_pos.SeriesInstanceUID)])
    neg = sr_summary(srs[str(dx_neg.SeriesInstanceUID)])
    ct_summary = sr_summary(srs[str(ct[0].SeriesInstanceUID)])
    assert pos["positive"] is True and neg["positive"] is False
    # DX and CT were routed to different models, and each SR names its algorithm and version
    assert pos["model"] == ("demo-chest-xr", "1.0.0") and neg["model"] == pos["model"]
    assert ct_summary["model"] == ("demo-ct-lesion", "1.0.0")
    assert ct_summary["positive"] is True
    assert dx_pos_truth is not None and ct_truth is not None
    cx, cy = pos["findings"][0]["centre"]
    assert dx_pos_truth.contains(cx, cy)
    ct_uids = [str(d.SOPInstanceUID) for d in ct]
    best = max(ct_summary["findings"], key=lambda f: f["probability"])
    assert ct_truth.on_slice(ct_uids.index(best["sop_instance_uid"]))
    assert ct_truth.contains(*best["centre"], margin=ct_truth.radius)

    verify = node.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    events = {e["event"] for e in node.audit_events()}
    assert {"instance.stored", "inference", "sr.created", "delivery.attempt", "job.state"} <= events
