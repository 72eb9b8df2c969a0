"""A 1000-frame 512 x 512 Enhanced CT through the node as a process: stored, every frame analysed, memory flat."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import needs_dciodvfy, needs_dcmtk
from peers import dciodvfy_errors, reset_peak_rss, storescu, vm_kib, wait_for

from edge_ai import phantoms
from edge_ai.report.sr import sr_summary

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_dcmtk, needs_dciodvfy]

FRAMES = 1000


def _enhanced_ct(path: Path) -> tuple[pydicom.Dataset, phantoms.Lesion]:
    """1000 frames made from a 40-slice phantom (each slice repeated 25 times), written frame by frame."""
    volume, truth = phantoms.ct_volume(np.random.default_rng(1000), slices=40, size=512, lesion=True, lesion_at=30)
    assert truth is not None
    ds = phantoms.enhanced_ct_dataset(None, shape=(FRAMES, 512, 512), patient_id="EDGE-MF")
    phantoms.write_multiframe(ds, (volume[k * 40 // FRAMES] for k in range(FRAMES)), path)
    return ds, truth


def test_1000_frame_enhanced_ct_is_stored_and_every_frame_analysed(node_factory: Any, tmp_path: Path) -> None:
    """storescu sends a 1000-frame 512 x 512 16-bit Enhanced CT (524 MB): Success, then one valid SR whose
    finding names a frame showing the lesion; the node's peak memory stays far below the volume's size."""
    path = tmp_path / "enhanced.dcm"
    ds, truth = _enhanced_ct(path)
    node = node_factory().start()
    pid = node.proc.pid
    reset_peak_rss(pid)
    before = vm_kib(pid)["VmRSS"]
    started = time.monotonic()
    out = storescu(node.port, [path])
    assert out.returncode == 0 and "Error" not in out.stdout + out.stderr, out.stdout + out.stderr
    stored_s = time.monotonic() - started
    srs = wait_for(lambda: sorted(node.results.rglob("*.dcm")), 300, interval=0.5)
    total_s = time.monotonic() - started
    peak_mb = (vm_kib(pid)["VmHWM"] - before) / 1024
    print(f"1000-frame Enhanced CT: stored in {stored_s:.1f} s, SR after {total_s:.1f} s, "
          f"node peak RSS growth {peak_mb:.0f} MB")
    assert srs and len(srs) == 1, node.log()
    summary = sr_summary(pydicom.dcmread(srs[0]))
    assert summary["evidence"] == [str(ds.SOPInstanceUID)]
    assert summary["positive"] is True
    frame = summary["findings"][0]["frame_number"]
    assert frame is not None and truth.on_slice((frame - 1) * 40 // FRAMES)
    assert dciodvfy_errors(srs[0]) == []
    inference = [e for e in node.audit_events() if e["event"] == "inference"]
    assert inference and inference[0]["images"] == FRAMES
    assert peak_mb < 200  # the decoded volume alone is 524 MB
