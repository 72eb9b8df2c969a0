"""Every delivery pattern a hospital's senders use gives exactly one result per series: the whole series in
one association, one instance per association, a series split over sequential or parallel associations, a
study mixing analysed and other objects, and callers that declare their pattern (`allowed_callers[].sends`).
The result is one SR per series (and model) covering every instance sent, none made while the series was
still arriving, each valid for dciodvfy."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import needs_dciodvfy, needs_dcmtk
from interop import harness
from interop.harness import stored_file
from peers import DCMTK, PEER_ENV, NodeProcess, dciodvfy_errors, wait_for
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edge_ai import phantoms
from edge_ai.report.sr import sr_summary

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_dcmtk, needs_dciodvfy]

WAIT_S = 30.0  # generous: the node should answer within its quiet window + 1.5 s of the last instance
SETTLE_S = 4.0  # after the covering SR: a second SR for the series would show within this
SLICES = 8


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the module; any caller, its pattern unknown to the node."""
    node = NodeProcess(tmp_path_factory.mktemp("delivery-node")).start()
    yield node
    node.stop()


def ct_series(folder: Path, seed: int, slices: int = SLICES, **identifiers: str) -> list[Path]:
    """A phantom CT series with a lesion (128 x 128), one file per slice, in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    series, _ = phantoms.ct_case(np.random.default_rng(seed), slices=slices, size=128, lesion=True, **identifiers)
    paths = []
    for i, ds in enumerate(series):
        path = folder / f"ct{i:03d}.dcm"
        phantoms.write_dataset(ds, path)
        paths.append(path)
    return paths


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


class Results:
    """The SRs in the node's results folder, read once each, by the series they report on."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self._read: dict[Path, pydicom.Dataset] = {}

    def for_series(self, series_uid: str) -> list[pydicom.Dataset]:
        folder = self.node.results
        for path in sorted(folder.rglob("*.dcm")) if folder.exists() else []:
            if path not in self._read:
                try:
                    self._read[path] = pydicom.dcmread(path)
                except Exception:  # noqa: S112 (a file still being written: read it on the next look)
                    continue
        out = []
        for sr in self._read.values():
            evidence = sr.CurrentRequestedProcedureEvidenceSequence
            if any(s.SeriesInstanceUID == series_uid for st in evidence for s in st.ReferencedSeriesSequence):
                out.append(sr)
        return out

    def path_of(self, sr: pydicom.Dataset) -> Path:
        return next(p for p, d in self._read.items() if d is sr)


def _evidence(sr: pydicom.Dataset) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for st in sr.CurrentRequestedProcedureEvidenceSequence
            for s in st.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}


def expect_one_sr(node: NodeProcess, results: Results, files: list[Path], last_sent: float,
                  ) -> tuple[pydicom.Dataset, float]:
    """Exactly one SR (per model) for the series of `files`, covering every one of them, valid for dciodvfy;
    with the seconds from `last_sent` until it was there."""
    series_uid = str(_header(files[0]).SeriesInstanceUID)
    sent = {str(_header(f).SOPInstanceUID) for f in files}
    covering = wait_for(lambda: [sr for sr in results.for_series(series_uid) if _evidence(sr) >= sent], WAIT_S)
    elapsed = time.monotonic() - last_sent
    srs = results.for_series(series_uid)
    assert covering, (f"no SR covering all {len(sent)} instances within {WAIT_S} s; SRs cover "
                      f"{[len(_evidence(sr)) for sr in srs]}\n{node.log()[-3000:]}")
    time.sleep(SETTLE_S)
    srs = results.for_series(series_uid)
    covers = [len(_evidence(sr)) for sr in srs]
    models = {sr_summary(sr)["model"] for sr in srs}
    assert (len(srs), len(models)) == (1, 1), f"{len(srs)} SRs for one series, covering {covers} of {len(sent)}"
    (sr,) = srs
    assert _evidence(sr) == sent
    assert dciodvfy_errors(results.path_of(sr)) == []
    print(f"SR {elapsed:.1f} s after the last instance")
    return sr, elapsed


def _no_sr_yet(results: Results, files: list[Path], when: str) -> None:
    series_uid = str(_header(files[0]).SeriesInstanceUID)
    early = [len(_evidence(sr)) for sr in results.for_series(series_uid)]
    assert early == [], f"SRs covering {early} of {len(files)} instances came {when}"


def storescu(port: int, files: list[Path], calling: str = "MODALITY") -> None:
    sent = harness.storescu(port, "EDGE_AI", files, calling=calling)
    assert sent.all_success, sent.output[-3000:]


# ---- the patterns ------------------------------------------------------------------------------------------


def whole_series(node: NodeProcess, results: Results, files: list[Path]) -> None:
    storescu(node.port, files)


def one_instance_per_association(node: NodeProcess, results: Results, files: list[Path]) -> None:
    for i, path in enumerate(files):
        storescu(node.port, [path])
        if i < len(files) - 1:
            time.sleep(0.3)  # a modality's pace between slices: far shorter than any quiet window
            _no_sr_yet(results, files, f"after instance {i + 1} of {len(files)}")


def sequential_split(node: NodeProcess, results: Results, files: list[Path]) -> None:
    half = len(files) // 2
    storescu(node.port, files[:half])
    _no_sr_yet(results, files, "after the first association")
    storescu(node.port, files[half:])


def parallel_split(node: NodeProcess, results: Results, files: list[Path]) -> None:
    procs = [subprocess.Popen([str(DCMTK / "storescu"), "-aet", "MODALITY", "-aec", "EDGE_AI", "127.0.0.1",
                               str(node.port), *map(str, part)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=PEER_ENV)
             for part in (files[0::2], files[1::2])]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode(errors="replace")


PATTERNS: dict[str, Callable[[NodeProcess, Results, list[Path]], None]] = {
    "whole series in one association": whole_series,
    "one instance per association": one_instance_per_association,
    "split over two sequential associations": sequential_split,
    "split over two parallel associations": parallel_split,
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_delivery_pattern_gives_one_sr_per_series(node: NodeProcess, tmp_path: Path, pattern: str) -> None:
    """However the modality delivers a CT series, PACS gets exactly one SR for it, covering every slice,
    and none from a series still arriving (an early partial result can miss the lesion)."""
    files = ct_series(tmp_path, seed=list(PATTERNS).index(pattern) + 1)
    results = Results(node)
    PATTERNS[pattern](node, results, files)
    sr, _ = expect_one_sr(node, results, files, time.monotonic())
    assert sr_summary(sr)["model"][0] == "demo-ct-lesion"


# ---- a mixed study ------------------------------------------------------------------------------------------


def _into_study(ds: pydicom.Dataset, ct: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of `ds` as part of the CT's study (same patient and study; its own series and instance)."""
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
                    "StudyID"):
        setattr(ds, keyword, getattr(ct, keyword))
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _dose_sr(ct: pydicom.Dataset) -> pydicom.Dataset:
    """A minimal X-Ray Radiation Dose SR, as a CT scanner sends after the images."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.XRayRadiationDoseSRStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = ct.StudyDate, ct.StudyTime
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "113701", "DCM", "X-Ray Radiation Dose Report"
    ds.ConceptNameCodeSequence = [title]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ContentSequence = []
    return _into_study(ds, ct)


def test_mixed_study_stores_everything_and_reports_the_ct_once(node: NodeProcess, tmp_path: Path) -> None:
    """A CT study with an MR, an RT Plan and a dose report among its objects: every object gets Success (the
    scanner's queue never stalls), the others are stored but not analysed, and the CT series gets exactly
    one SR covering every CT slice."""
    files = ct_series(tmp_path / "ct", seed=21)
    ct = pydicom.dcmread(files[0])
    others = []
    for name, ds in [("mr", pydicom.dcmread(get_testdata_file("MR_small.dcm"))),
                     ("rtplan", pydicom.dcmread(get_testdata_file("rtplan.dcm"))),
                     ("dose", _dose_sr(ct))]:
        if name != "dose":
            ds = _into_study(ds, ct)
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        others.append(path)
    # as a scanner's queue sends them: an MR first, the plan among the slices, the dose report last
    half = len(files) // 2
    storescu(node.port, [others[0], *files[:half], others[1], *files[half:], others[2]])
    results = Results(node)
    expect_one_sr(node, results, files, time.monotonic())
    for path in others:
        ds = _header(path)
        assert stored_file(node, str(ds.SOPInstanceUID)) is not None, f"{ds.SOPClassUID.name} not stored"
        assert not results.for_series(str(ds.SeriesInstanceUID)), f"{ds.SOPClassUID.name} was analysed"
    events = [e for e in node.audit_events() if e["event"] == "instance.stored"]
    audited = {e["sop_instance_uid"] for e in events}
    assert {str(_header(p).SOPInstanceUID) for p in others} <= audited


# ---- callers that declare their pattern --------------------------------------------------------------------


def test_declared_callers_each_get_one_sr_per_series(node_factory: Any, tmp_path: Path) -> None:
    """A router declared `sends: instances` (one instance per association) and a scanner declared `sends:
    series` each get exactly one SR per series; the scanner's comes promptly after its release."""
    declared = node_factory(extra={"node": {"allowed_callers": [
        {"ae_title": "ROUTER", "hosts": ["127.0.0.0/8"], "sends": "instances"},
        {"ae_title": "CT_SCANNER", "hosts": ["127.0.0.0/8"], "sends": "series"},
    ]}})
    declared.write_config()
    check = declared.cli("check-config")
    assert check.returncode == 0, f"the node refuses allowed_callers[].sends: {check.stdout}{check.stderr}"
    declared.start()
    results = Results(declared)

    routed = ct_series(tmp_path / "routed", seed=31)
    for i, path in enumerate(routed):
        storescu(declared.port, [path], calling="ROUTER")
        if i < len(routed) - 1:
            time.sleep(0.3)
            _no_sr_yet(results, routed, f"after instance {i + 1} of {len(routed)} from the router")
    expect_one_sr(declared, results, routed, time.monotonic())

    scanned = ct_series(tmp_path / "scanned", seed=32)
    storescu(declared.port, scanned, calling="CT_SCANNER")
    _, elapsed = expect_one_sr(declared, results, scanned, time.monotonic())
    assert elapsed < 10, f"a declared whole-series sender waited {elapsed:.1f} s for its SR"
