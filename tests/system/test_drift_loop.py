"""The whole drift loop on a real node with the demo chest model and real DICOM files over storescu:
drifted inputs -> drift alarm; disagreeing readers -> agreement alarm; export -> retrain -> install as
shadow (audited, never delivered) -> promote (no restart) -> SRs from the new version -> rollback.

Reader verdicts go in through `edge-ai feedback` (the offline path of Agreement.record_feedback,
which the running node audits); POST /v1/jobs/{id}/feedback calls the same function in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from conftest import needs_dcmtk
from peers import NodeProcess, storescu, wait_for
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
from pynetdicom import AE

from edge_ai import phantoms
from edge_ai.config import MODELS_DIR

pytestmark = [needs_dcmtk, pytest.mark.slow]
torch = pytest.importorskip("torch", reason="the train extra (pip install torch==2.13.0)")  # CI installs it

ROOT = Path(__file__).resolve().parents[2]
MODEL = "demo-chest-xr"


def _normal(seed: int) -> pydicom.Dataset:
    ds, _ = phantoms.dx_case(np.random.default_rng(seed), size=256, lesion=False)
    return ds


def _shifted(seed: int) -> pydicom.Dataset:
    """Another scanner: inverted grey scale, low contrast, lifted baseline (as tests/system/test_drift.py)."""
    raw = _normal(seed).pixel_array.astype(np.float32)
    top = float(raw.max())
    return phantoms.dx_dataset(np.clip((top - raw) * 0.3 + 0.35 * top, 0, 4095).astype(np.uint16))


def _send(node: NodeProcess, folder: Path, datasets: list[pydicom.Dataset]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        phantoms.write_dataset(ds, folder / f"{i:03d}.dcm")
        paths.append(folder / f"{i:03d}.dcm")
    assert storescu(node.port, paths).returncode == 0
    return [str(ds.SeriesInstanceUID) for ds in datasets]


def _events(node: NodeProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in node.audit_events() if e["event"] == name]


def _srs_for(node: NodeProcess, series: list[str]) -> list[dict[str, Any]]:
    """sr.created of these series, once every one of them is delivered."""
    def done() -> bool:
        states = _events(node, "job.state")
        return all(any(e["series_uid"] == s and e["state"] == "delivered" for e in states) for s in series)

    assert wait_for(done, 90), node.log()[-3000:]
    return [e for e in _events(node, "sr.created") if e["series_uid"] in series]


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
        for line in rsp.read().decode().splitlines():
            if line.startswith(f'{name}{{model="{MODEL}"}}'):
                return float(line.split()[-1])
    return None


def _algorithm_version(node: NodeProcess, sr_uid: str) -> str:
    """Algorithm Version (DCM 111003, TID 4019) in the SR the results folder received."""
    path = next(node.results.rglob(f"{sr_uid}.dcm"))
    versions = {str(item.TextValue) for item in pydicom.dcmread(path).iterall() if item.keyword == "ContentSequence"
                for item in item.value if "ConceptNameCodeSequence" in item and "TextValue" in item
                and item.ConceptNameCodeSequence[0].CodeValue == "111003"}
    assert len(versions) == 1, versions
    return versions.pop()


def _reloaded(node: NodeProcess, before: int) -> bool:
    return len([e for e in _events(node, "config.loaded") if e.get("reload")]) > before


def test_drift_feedback_export_retrain_shadow_promote_rollback(tmp_path: Path) -> None:
    """Hospital IT sees drift and disagreement alarms, trials a retrained version in shadow, promotes and
    rolls it back on the running node, and every SR names the version that made it."""
    node = NodeProcess(tmp_path / "node", extra={
        "models": [{"path": str(MODELS_DIR / "demo_chest_xr"), "agreement_window": 4, "min_agreement": 0.8}],
        "routing": [{"name": "chest", "match": {"Modality": ["DX"]}, "model": MODEL}],
        "drift": {"window": 6, "threshold": 0.25},
    }).start()
    try:
        metrics_port = int(yaml.safe_load(node.config_path.read_text())["metrics"]["port"])
        pid = node.proc.pid if node.proc else 0
        # 1. drift: six normal images, then six from a different scanner
        normal = _send(node, tmp_path / "normal", [_normal(s) for s in range(100, 106)])
        _srs_for(node, normal)
        assert _events(node, "drift.detected") == []
        shifted = _send(node, tmp_path / "shifted", [_shifted(s) for s in range(200, 206)])
        _srs_for(node, shifted)
        assert len(_events(node, "drift.detected")) == 1

        # 2. readers disagree with four results: agreement 0 of 4 < 0.8
        jobs = {e["series_uid"]: e["job"] for e in _events(node, "job.state")}
        for series in shifted[:4]:
            out = node.cli("feedback", str(jobs[series]), "--disagree", "--comment", "missed it")
            assert out.returncode == 0, out.stderr
        assert wait_for(lambda: len(_events(node, "model.agreement_low")) == 1, 15), node.log()[-2000:]
        low = _events(node, "model.agreement_low")[0]
        assert (low["model"], low["agreement"], low["verdicts"]) == (MODEL, 0.0, 4)
        assert len(_events(node, "feedback.received")) == 4
        assert _metric(metrics_port, "edge_ai_model_agreement") == 0.0
        assert wait_for(lambda: "agreement 0.00 over 4/4 verdicts (min 0.8, LOW)" in node.cli("status").stdout, 15)

        # 3. export the drifted and disagreed cases, retrain on them, keep the result as a shadow
        out = node.cli("export", "--out", str(tmp_path / "export"), "--reason", "drift,disagreement")
        assert out.returncode == 0, out.stderr
        manifest = [json.loads(ln) for ln in (tmp_path / "export" / "manifest.jsonl").read_text().splitlines()]
        assert len(manifest) >= 6 and sum(m["label"] is not None for m in manifest) == 4
        assert all("drift" in m["reasons"] for m in manifest if m["label"] is None)
        retrain = subprocess.run([sys.executable, str(ROOT / "scripts" / "retrain.py"), str(tmp_path / "export"),
                                  "--out", str(tmp_path / "v101"), "--epochs", "2"],
                                 capture_output=True, text=True, timeout=600, check=False)
        assert retrain.returncode == 0, retrain.stderr[-3000:]
        reloads = len([e for e in _events(node, "config.loaded") if e.get("reload")])
        install = node.cli("model", "install", str(tmp_path / "v101"), "--shadow")
        assert install.returncode == 0, install.stderr
        assert wait_for(lambda: _reloaded(node, reloads), 30), node.log()[-2000:]
        assert any(e.get("role") == "shadow" and e["version"] == "1.0.1" for e in _events(node, "model.loaded"))

        # 4. the shadow runs on the same series: audited and compared, never an SR, never delivered
        trial = _send(node, tmp_path / "trial", [_shifted(s) for s in range(300, 303)])
        srs = _srs_for(node, trial)
        assert [e["version"] for e in srs] == ["1.0.0"] * 3
        shadow = [e for e in _events(node, "shadow.inference") if e["series_uid"] in trial]
        assert len(shadow) == 3 and {e["version"] for e in shadow} == {"1.0.1"}
        assert all(isinstance(e["agree"], bool) and e["live_version"] == "1.0.0" for e in shadow)
        assert all(e["shared_tensors"] for e in shadow)  # same preprocessing: the live run's tensors, no re-read
        assert wait_for(lambda: "shadow 1.0.1 on onnxruntime" in node.cli("status").stdout, 15)
        assert not [e for e in _events(node, "sr.created") if e["version"] == "1.0.1"]
        assert _metric(metrics_port, "edge_ai_shadow_agreement") is not None
        delivered = {e["sr_sop_instance_uid"] for e in _events(node, "sr.created")}
        assert {p.name.removesuffix(".dcm") for p in node.results.rglob("*.dcm")} == delivered
        assert {_algorithm_version(node, uid) for uid in (e["sr_sop_instance_uid"] for e in srs)} == {"1.0.0"}

        # 5. promote on the running node while a modality's association is open: it carries on, next SRs
        #    come from 1.0.1, no restart
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGE_AI")
        assert assoc.is_established
        first, second = _shifted(400), _shifted(401)
        assert assoc.send_c_store(first).Status == 0x0000
        reloads = len([e for e in _events(node, "config.loaded") if e.get("reload")])
        assert node.cli("model", "promote", MODEL, "1.0.1").returncode == 0
        assert wait_for(lambda: _reloaded(node, reloads), 30), node.log()[-2000:]
        assert assoc.is_established and assoc.send_c_store(second).Status == 0x0000
        assoc.release()
        assert _events(node, "association.aborted") == []
        after = [str(first.SeriesInstanceUID), str(second.SeriesInstanceUID)]
        srs = _srs_for(node, after)
        assert [e["version"] for e in srs] == ["1.0.1", "1.0.1"]
        assert {_algorithm_version(node, e["sr_sop_instance_uid"]) for e in srs} == {"1.0.1"}

        # 6. roll back: SRs from 1.0.0 again
        reloads = len([e for e in _events(node, "config.loaded") if e.get("reload")])
        assert node.cli("model", "rollback", MODEL).returncode == 0
        assert wait_for(lambda: _reloaded(node, reloads), 30), node.log()[-2000:]
        back = _send(node, tmp_path / "back", [_shifted(s) for s in range(500, 502)])
        srs = _srs_for(node, back)
        assert [e["version"] for e in srs] == ["1.0.0", "1.0.0"]
        assert {_algorithm_version(node, e["sr_sop_instance_uid"]) for e in srs} == {"1.0.0"}

        listing = node.cli("model", "list").stdout
        assert f"{MODEL} 1.0.0 (configured package): live" in listing and f"{MODEL} 1.0.1: kept" in listing
        assert [e["event"] for e in node.audit_events() if e["event"].startswith("model.") and e["event"] in (
            "model.installed", "model.promoted", "model.rolled_back")] == [
            "model.installed", "model.promoted", "model.rolled_back"]
        promoted, rolled_back = _events(node, "model.promoted")[0], _events(node, "model.rolled_back")[0]
        assert (promoted["version"], promoted["previous"]) == ("1.0.1", "1.0.0 (configured package)")
        assert (rolled_back["from_version"], rolled_back["to_version"]) == ("1.0.1", "1.0.0 (configured package)")
        assert len(_events(node, "node.start")) == 1 and node.proc is not None and node.proc.pid == pid
        assert node.proc.poll() is None
        assert node.cli("audit", "verify").returncode == 0
    finally:
        node.stop()
