"""What gets in: every SOP class and transfer syntax of the conformance statement, stored exactly as sent,
decoded later in the worker; duplicates stored once, conflicts kept as versions and audited."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import needs_dcmtk
from peers import NodeProcess, dataset_bytes, dcmtk, storescu, wait_for
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from edge_ai import phantoms
from edge_ai.dicom import contexts
from edge_ai.spool.store import Spool

pytestmark = [pytest.mark.integration, needs_dcmtk]

# transfer syntax -> how a modality-side tool makes such a file from an uncompressed one
MAKERS: dict[str, tuple[str, ...]] = {
    ExplicitVRLittleEndian: ("dcmconv", "+te"),
    ImplicitVRLittleEndian: ("dcmconv", "+ti"),
    DeflatedExplicitVRLittleEndian: ("dcmconv", "+td"),
    RLELossless: ("dcmcrle",),
    JPEGBaseline8Bit: ("dcmcjpeg", "+eb"),
    JPEGExtended12Bit: ("dcmcjpeg", "+ee"),
    JPEGLossless: ("dcmcjpeg", "+el"),
    JPEGLosslessSV1: ("dcmcjpeg", "+e1"),
    JPEGLSLossless: ("dcmcjpls", "+el"),
    JPEGLSNearLossless: ("dcmcjpls", "+en"),
    JPEG2000Lossless: ("pydicom",),
    JPEG2000: ("pydicom",),
}


def storescu_profile(folder: Path, pairs: set[tuple[str, str]]) -> tuple[str, ...]:
    """storescu options proposing exactly these (SOP class, transfer syntax) pairs, one context each."""
    ts_names = {ts: f"TS{i}" for i, ts in enumerate(sorted({ts for _, ts in pairs}))}
    lines = ["[[TransferSyntaxes]]"]
    for ts, name in ts_names.items():
        lines += [f"[{name}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for i, (sop, ts) in enumerate(sorted(pairs), 1):
        lines.append(f"PresentationContext{i} = {sop}\\{ts_names[ts]}")
    lines += ["[[Profiles]]", "[Edge]", "PresentationContexts = Contexts"]
    cfg = folder / "storescu.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return ("-xf", str(cfg), "Edge")


def make_file(folder: Path, ts: str, sop_class: str = contexts.DX_PRESENTATION, seed: int = 1) -> Path:
    """A small DX-like instance of `sop_class` in transfer syntax `ts`, made the way a modality would."""
    folder.mkdir(parents=True, exist_ok=True)
    ds, _ = phantoms.dx_case(np.random.default_rng(seed), size=256, lesion=True)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    if ts == JPEGBaseline8Bit:  # baseline JPEG is 8-bit only
        arr = (ds.pixel_array >> 4).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = arr.tobytes()
        ds.WindowCenter, ds.WindowWidth = "128", "256"
    plain = folder / f"plain-{seed}.dcm"
    phantoms.write_dataset(ds, plain)
    out = folder / f"{ts}-{seed}.dcm"
    tool = MAKERS[ts]
    if tool[0] == "pydicom":
        ds = pydicom.dcmread(plain)
        kwargs: dict[str, Any] = {} if ts == JPEG2000Lossless else {"j2k_cr": [10]}
        ds.compress(ts, **kwargs)
        ds.save_as(out, enforce_file_format=True)
    else:
        res = dcmtk(tool[0], *tool[1:], str(plain), str(out))
        assert res.returncode == 0, res.stderr
    assert pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
    return out


def _stored(node: NodeProcess, sop_uid: str) -> dict[str, Any] | None:
    for e in node.audit_events():
        if e["event"] == "instance.stored" and e["sop_instance_uid"] == sop_uid:
            return e
    return None


def _sr_for_series(node: NodeProcess, series_uid: str) -> pydicom.Dataset | None:
    for path in sorted(node.results.rglob("*.dcm")) if node.results.exists() else []:
        sr = pydicom.dcmread(path)
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        if evidence.SeriesInstanceUID == series_uid:
            return sr
    return None


def _job_failed(node: NodeProcess, series_uid: str) -> str | None:
    for e in node.audit_events():
        if e["event"] == "job.state" and e.get("series_uid") == series_uid and e["state"] == "failed":
            return f"job failed: {e.get('reason')}"
    return None


@pytest.fixture(scope="module")
def data_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("data-node")).start()
    yield node
    node.stop()


@pytest.mark.parametrize("ts", list(MAKERS), ids=[pydicom.uid.UID(t).name for t in MAKERS])
def test_transfer_syntax_stored_as_received_and_reported(
    data_node: NodeProcess, tmp_path: Path, ts: str
) -> None:
    """A DX in each accepted transfer syntax is acknowledged, kept byte for byte as sent, and gets an SR."""
    path = make_file(tmp_path, ts)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    out = storescu(data_node.port, [path], extra=storescu_profile(tmp_path, {(ds.SOPClassUID, ts)}))
    assert out.returncode == 0, out.stderr
    stored = wait_for(lambda: _stored(data_node, ds.SOPInstanceUID), 10)
    assert stored, data_node.log()
    spool = Spool(data_node.root / "var" / "spool")
    spool_file = spool.instance_path(f"{ds.SOPInstanceUID}|{stored['sha256']}")
    assert pydicom.dcmread(spool_file, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
    kept, sent = dataset_bytes(spool_file), dataset_bytes(path)
    assert stored["sha256"] == hashlib.sha256(kept).hexdigest()
    if ts == DeflatedExplicitVRLittleEndian:
        # storescu inflates and deflates again on sending (its own level), so compare what they carry;
        # the node keeps the deflated stream it received (the transfer syntax check above)
        kept, sent = zlib.decompress(kept, -15), zlib.decompress(sent, -15)
    assert kept == sent, "the spool holds other or re-encoded data"
    outcome = wait_for(lambda: _sr_for_series(data_node, ds.SeriesInstanceUID)
                       or _job_failed(data_node, ds.SeriesInstanceUID), 60)
    assert isinstance(outcome, pydicom.Dataset), f"no SR: {outcome or data_node.log()[-3000:]}"
    assert outcome.Modality == "SR"


@pytest.mark.parametrize("sop_class", list(contexts.STORAGE_CLASSES),
                         ids=list(contexts.STORAGE_CLASSES.values()))
def test_every_storage_class_is_accepted(data_node: NodeProcess, tmp_path: Path, sop_class: str) -> None:
    """Each SOP class of the conformance statement is stored with Success over DCMTK storescu."""
    path = make_file(tmp_path, ExplicitVRLittleEndian, sop_class=sop_class, seed=3)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    profile = storescu_profile(tmp_path, {(sop_class, ExplicitVRLittleEndian)})
    out = storescu(data_node.port, [path], extra=profile)
    assert out.returncode == 0, out.stderr
    stored = wait_for(lambda: _stored(data_node, ds.SOPInstanceUID), 10)
    assert stored and stored["status"] == 0 and stored["sop_class_uid"] == sop_class


def test_same_instance_twice_is_stored_once(node_factory: Any, tmp_path: Path) -> None:
    """Re-sending an identical instance gets Success and leaves one file, audited as a duplicate."""
    node = node_factory().start()
    path = make_file(tmp_path, ExplicitVRLittleEndian, seed=5)
    for _ in range(2):
        out = storescu(node.port, [path])
        assert out.returncode == 0, out.stderr
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    events = wait_for(lambda: [e for e in node.audit_events() if e.get("sop_instance_uid") == uid
                               and e["event"] == "instance.stored"][1:] and node.audit_events(), 10)
    stored = [e for e in events if e["event"] == "instance.stored" and e["sop_instance_uid"] == uid]
    assert len(stored) == 2 and stored[1].get("duplicate") is True and "conflict" not in stored[1]
    assert len(list((node.root / "var" / "spool" / "instances").rglob("*.dcm"))) == 1


def test_same_uid_different_content_is_kept_as_version_and_audited(node_factory: Any, tmp_path: Path) -> None:
    """A second, different object under an already used SOP Instance UID is kept and audited as a conflict."""
    node = node_factory().start()
    first = make_file(tmp_path / "a", ExplicitVRLittleEndian, seed=6)
    ds = pydicom.dcmread(first)
    ds.SeriesDescription = "edited at the modality"
    second = tmp_path / "second.dcm"
    ds.save_as(second, enforce_file_format=True)
    for path in (first, second):
        out = storescu(node.port, [path])
        assert out.returncode == 0, out.stderr
    conflict = wait_for(lambda: [e for e in node.audit_events() if e["event"] == "instance.conflict"], 10)
    assert conflict and conflict[0]["sop_instance_uid"] == ds.SOPInstanceUID
    assert "new version" in conflict[0]["reason"]
    assert len(list((node.root / "var" / "spool" / "instances").rglob("*.dcm"))) == 2


def test_a_series_spread_over_two_studies_fails_with_the_reason(data_node: NodeProcess, tmp_path: Path) -> None:
    """Two instances of one series that a sender gave two Study Instance UIDs are stored (Success); their
    job fails saying why, not with an internal error, no SR is made, and the node goes on serving. The
    instance sent again with the series' study gets the series its SR."""
    first = make_file(tmp_path / "a", ExplicitVRLittleEndian, seed=11)
    ds = pydicom.dcmread(make_file(tmp_path / "b", ExplicitVRLittleEndian, seed=12))
    series = pydicom.dcmread(first, stop_before_pixels=True)
    ds.SeriesInstanceUID = series.SeriesInstanceUID
    assert ds.StudyInstanceUID != series.StudyInstanceUID
    second = tmp_path / "other-study.dcm"
    ds.save_as(second, enforce_file_format=True)
    out = storescu(data_node.port, [first, second])
    assert out.returncode == 0, out.stderr
    reason = wait_for(lambda: _job_failed(data_node, series.SeriesInstanceUID), 60)
    assert reason == ("job failed: the instances of this series carry 2 different Study Instance UIDs;"
                      " an SR reports a series of one study"), reason or data_node.log()[-3000:]
    assert _sr_for_series(data_node, series.SeriesInstanceUID) is None
    after = make_file(tmp_path / "c", ExplicitVRLittleEndian, seed=13)
    assert storescu(data_node.port, [after]).returncode == 0
    uid = pydicom.dcmread(after, stop_before_pixels=True).SeriesInstanceUID
    assert isinstance(wait_for(lambda: _sr_for_series(data_node, uid), 60), pydicom.Dataset)
    ds.StudyInstanceUID = series.StudyInstanceUID  # the sender corrects the instance and sends it again
    ds.save_as(second, enforce_file_format=True)
    assert storescu(data_node.port, [second]).returncode == 0
    sr = wait_for(lambda: _sr_for_series(data_node, series.SeriesInstanceUID), 60)
    assert isinstance(sr, pydicom.Dataset), data_node.log()[-3000:]
    assert sr.StudyInstanceUID == series.StudyInstanceUID
