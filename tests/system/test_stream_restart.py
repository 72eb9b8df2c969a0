"""kill -9 while a series' slices are being inferred, before its association is released: after restart
every acknowledged instance is reported, exactly once per destination, in the very SR an undisturbed
node makes."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import needs_dcmtk, needs_orthanc
from peers import DCMTK, PEER_ENV, Orthanc, storescu, wait_for

from edge_ai import phantoms

pytestmark = [needs_dcmtk, needs_orthanc, pytest.mark.slow]

SLICES = 240


def _files(tmp_path: Path) -> tuple[list[pydicom.Dataset], list[Path]]:
    datasets, _ = phantoms.ct_case(np.random.default_rng(77), slices=SLICES, size=256, lesion=True)
    folder = tmp_path / "ct"
    folder.mkdir()
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(folder / f"{i:03d}.dcm")
        phantoms.write_dataset(ds, paths[-1])
    return datasets, paths


def _count(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0


def _evidence(sr: pydicom.Dataset) -> list[str]:
    return [str(i.ReferencedSOPInstanceUID)
            for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for i in s.ReferencedSOPSequence]


def test_kill9_mid_series_while_inferring_reports_once_per_destination(
        node_factory: Any, tmp_path: Path) -> None:
    """A CT whose first slices were already inferred when the node was killed mid-association is, once
    the modality sends it again, reported once to the results folder and once to PACS, with every
    slice as evidence and the same SR (UID and content) as a node that was never interrupted."""
    datasets, files = _files(tmp_path)
    pacs = Orthanc(tmp_path / "pacs").start()
    try:
        node = node_factory(destinations=[{"name": "results", "type": "folder", "path": "var/results"},
                                          pacs.destination()],
                            extra={"grouping": {"series_timeout_s": 30}}).start()  # the resend comes well inside
        db = node.root / "var" / "spool" / "queue.sqlite3"
        sender = subprocess.Popen([str(DCMTK / "storescu"), "-aet", "MODALITY", "-aec", "EDGE_AI", "127.0.0.1",
                                   str(node.port), *map(str, files)], env=PEER_ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        inferred = wait_for(lambda: _count(db, "SELECT COUNT(*) FROM outputs WHERE error IS NULL") >= 16, 60)
        still_sending = sender.poll() is None
        node.kill9()
        sender.wait(30)
        assert inferred, node.log()
        assert still_sending, "the series was fully sent before any slice was inferred: nothing was tested"
        kept = _count(db, "SELECT COUNT(*) FROM instances")
        assert 0 < kept < SLICES
        node.start()
        out = storescu(node.port, files)  # the modality sends the series again after the failure
        assert out.returncode == 0, out.stderr
        assert wait_for(lambda: len(pacs.instances_of_modality("SR")) >= 1, 90), node.log()
        time.sleep(3)  # anything more would arrive now
        assert len(pacs.instances_of_modality("SR")) == 1
        srs = sorted(node.results.rglob("*.dcm"))
        assert len(srs) == 1
        sr = pydicom.dcmread(srs[0])
        assert sorted(_evidence(sr)) == sorted(str(d.SOPInstanceUID) for d in datasets)
        inference = [e for e in node.audit_events() if e["event"] == "inference"]
        assert len(inference) == 1 and inference[0]["images"] == SLICES
        node.stop()
        node.start()  # another restart reports nothing again
        assert wait_for(lambda: len(list(node.results.rglob("*.dcm"))) > 1, 3) is False

        calm = node_factory().start()
        assert storescu(calm.port, files).returncode == 0
        reference = wait_for(lambda: sorted(calm.results.rglob("*.dcm")), 90)
        assert reference, calm.log()
        expected = pydicom.dcmread(reference[0])
        assert sr.SOPInstanceUID == expected.SOPInstanceUID  # same UID: same sources, same content
        assert _evidence(sr) == _evidence(expected)
    finally:
        pacs.stop()
