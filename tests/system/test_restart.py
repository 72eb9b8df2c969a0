"""The node as a real process: kill -9 and restart lose nothing that was acknowledged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import needs_dcmtk, needs_orthanc
from peers import Orthanc, storescu, wait_for

from edge_ai import phantoms

pytestmark = [needs_dcmtk]


def _ct_files(tmp_path: Path, seed: int, slices: int = 12) -> tuple[list[pydicom.Dataset], list[Path]]:
    datasets, _ = phantoms.ct_case(np.random.default_rng(seed), slices=slices, size=256, lesion=True)
    folder = tmp_path / f"ct{seed}"
    folder.mkdir()
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(folder / f"{i:03d}.dcm")
        phantoms.write_dataset(ds, paths[-1])
    return datasets, paths


def _srs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm")) if folder.exists() else []


def test_kill9_right_after_ack_still_reports_once(node_factory: Any, tmp_path: Path) -> None:
    """A series acknowledged just before kill -9 is reported exactly once after restart."""
    node = node_factory(extra={"grouping": {"series_timeout_s": 1, "aborted_timeout_s": 1}}).start()
    datasets, files = _ct_files(tmp_path, seed=11)
    out = storescu(node.port, files)
    assert out.returncode == 0, out.stderr
    node.kill9()
    node.start()
    srs = wait_for(lambda: _srs(node.results), 60)
    assert len(srs) == 1, node.log()
    sr = pydicom.dcmread(srs[0])
    refs = {
        str(i.ReferencedSOPInstanceUID)
        for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }
    assert refs == {str(d.SOPInstanceUID) for d in datasets}
    # Another restart must not report it again.
    node.stop()
    node.start()
    assert wait_for(lambda: len(_srs(node.results)) > 1, 3) is False
    assert node.cli("audit", "verify").returncode == 0


def test_sigterm_exits_zero_and_resumes_queue(node_factory: Any, tmp_path: Path) -> None:
    """SIGTERM stops the node cleanly (exit 0) and the next start carries on."""
    node = node_factory().start()
    assert node.stop() == 0
    node.start()
    _, files = _ct_files(tmp_path, seed=12, slices=8)
    assert storescu(node.port, files).returncode == 0
    assert wait_for(lambda: _srs(node.results), 60)
    assert node.stop() == 0
    events = [e["event"] for e in node.audit_events()]
    assert events.count("node.start") == 2 and events.count("node.stop") == 2


@needs_orthanc
def test_pacs_down_then_up_delivers_by_itself(node_factory: Any, tmp_path: Path) -> None:
    """A PACS that is down delays the SR; after a node restart and the PACS's return it arrives unaided."""
    pacs = Orthanc(tmp_path / "pacs")
    node = node_factory(destinations=[pacs.destination()]).start()
    _, files = _ct_files(tmp_path, seed=13, slices=8)
    assert storescu(node.port, files).returncode == 0
    assert wait_for(
        lambda: any(e["event"] == "delivery.attempt" and e.get("outcome") == "retry" for e in node.audit_events()), 60
    ), node.log()
    node.kill9()
    node.start()
    pacs.start()
    try:
        assert wait_for(lambda: pacs.instances_of_modality("SR"), 60), node.log()
        assert len(pacs.instances_of_modality("SR")) == 1
        status = node.cli("status")
        assert "delivered=1" in status.stdout
    finally:
        pacs.stop()


@pytest.mark.parametrize("attempts", [2])
def test_refusing_destination_is_dead_lettered(node_factory: Any, tmp_path: Path, attempts: int) -> None:
    """A destination that never accepts ends as a dead letter with its reason, shown by `edge-ai status`."""
    from peers import free_port

    dest = {"name": "nowhere", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(),
            "retry": {"attempts": attempts, "initial_s": 0.1, "max_s": 0.2}}
    node = node_factory(destinations=[dest]).start()
    _, files = _ct_files(tmp_path, seed=14, slices=8)
    assert storescu(node.port, files).returncode == 0
    assert wait_for(lambda: "dead letters: 1" in node.cli("status").stdout, 60), node.log()
    status = node.cli("status").stdout
    assert "nowhere" in status and f"after {attempts} attempts" in status


def test_retention_deletes_delivered_images_and_keeps_serving(node_factory: Any, tmp_path: Path) -> None:
    """With storage.retention_days at ~4 s, a delivered CT series' images leave the spool by themselves
    (audited as spool.purged), its SR stays, and sending the same series again makes no second SR."""
    node = node_factory(extra={"storage": {"retention_days": 5 / 86400}}).start()
    _, files = _ct_files(tmp_path, seed=41, slices=10)
    assert storescu(node.port, files).returncode == 0
    assert wait_for(lambda: len(_srs(node.results)) == 1, 60), node.log()
    spool = node.root / "var" / "spool" / "instances"
    assert wait_for(lambda: not list(spool.rglob("*.dcm")), 30), "delivered images are purged"
    purged = [e for e in node.audit_events() if e["event"] == "spool.purged"]
    assert len(purged) == 1 and purged[0]["instances"] == 10
    assert storescu(node.port, files).returncode == 0, "a resend is acknowledged"
    assert node.cli("status").returncode == 0
    assert len(_srs(node.results)) == 1 and not list(spool.rglob("*.dcm"))
    # a late slice cannot reopen a series whose other images are gone: its job fails with the reason
    late = pydicom.dcmread(files[0])
    late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    late.save_as(tmp_path / "late.dcm")
    assert storescu(node.port, [tmp_path / "late.dcm"]).returncode == 0
    failed = wait_for(lambda: [e for e in node.audit_events() if e["event"] == "job.state"
                               and e.get("state") == "failed"], 30)
    assert failed and "storage.retention_days" in failed[0]["reason"], node.audit_events()[-5:]
    assert len(_srs(node.results)) == 1, "no SR from the one slice left"
