"""SIGHUP reload and model integrity, on a real `edge-ai serve` process with DCMTK as the modality."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import yaml
from conftest import needs_dcmtk
from peers import storescu, wait_for
from pynetdicom import AE
from toy_models import make_package

from edge_ai import phantoms
from edge_ai.dicom.contexts import DX_PRESENTATION
from edge_ai.report.sr import sr_summary

pytestmark = [needs_dcmtk]


def _dx(tmp_path: Path, seed: int) -> Path:
    ds, _ = phantoms.dx_case(np.random.default_rng(seed), size=256, lesion=False)
    path = tmp_path / f"dx{seed}.dcm"
    phantoms.write_dataset(ds, path)
    return path


def _models_in_results(results: Path) -> list[str]:
    return sorted(sr_summary(pydicom.dcmread(p))["model"][0] for p in results.rglob("*.dcm"))


def _config(tmp_path: Path, model: str) -> dict[str, Any]:
    return {
        "models": [{"path": str(tmp_path / model)}],
        "routing": [{"name": "dx", "match": {"Modality": ["DX"]}, "model": model}],
    }


def test_sighup_switches_models_and_refuses_a_bad_config(node_factory: Any, tmp_path: Path) -> None:
    """After SIGHUP new studies use the new model; a broken config is refused and the old set keeps serving."""
    for name in ("toy-a", "toy-b"):
        make_package(tmp_path / name, name=name, size=64, batch_sizes=(1,), modalities=("DX",))
    node = node_factory(extra=_config(tmp_path, "toy-a")).start()
    assert storescu(node.port, [_dx(tmp_path, 1)]).returncode == 0
    assert wait_for(lambda: _models_in_results(node.results) == ["toy-a"], 30), node.log()

    # An association that is open across the reload keeps working.
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(DX_PRESENTATION)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGE_AI")
    assert assoc.is_established
    cfg = yaml.safe_load(node.config_path.read_text())
    cfg.update(_config(tmp_path, "toy-b"))
    node.config_path.write_text(yaml.safe_dump(cfg))
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: any(e["event"] == "config.loaded" and e.get("reload") for e in node.audit_events()), 15)
    # the worker thawed what was frozen at start (the replaced model among it) and froze what is alive now
    assert wait_for(lambda: "memory_refrozen" in node.log(), 15), node.log()
    refrozen = json.loads(next(line for line in node.log().splitlines() if "memory_refrozen" in line))
    assert refrozen["frozen"] > 10_000
    ds = pydicom.dcmread(_dx(tmp_path, 2))
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert wait_for(lambda: _models_in_results(node.results) == ["toy-a", "toy-b"], 30), node.log()

    node.config_path.write_text(node.config_path.read_text() + "\nbogus_section: {}\n")
    os.kill(node.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: any(e["event"] == "config.reload_refused" for e in node.audit_events()), 15)
    refused = [e for e in node.audit_events() if e["event"] == "config.reload_refused"][-1]
    assert "bogus_section" in refused["reason"]
    assert storescu(node.port, [_dx(tmp_path, 3)]).returncode == 0
    assert wait_for(lambda: _models_in_results(node.results) == ["toy-a", "toy-b", "toy-b"], 30), node.log()
    assert node.proc.poll() is None


def test_tampered_model_is_not_served(node_factory: Any, tmp_path: Path) -> None:
    """A model.onnx changed after release fails `model validate` and `check-config`, and the node refuses it."""
    package = make_package(tmp_path / "toy-a", name="toy-a", size=64, batch_sizes=(1,), modalities=("DX",))
    node = node_factory(extra=_config(tmp_path, "toy-a"))
    node.write_config()
    assert node.cli("check-config").returncode == 0
    with (package / "model.onnx").open("ab") as f:
        f.write(b"\0")
    validate = subprocess.run([sys.executable, "-m", "edge_ai", "model", "validate", str(package)],
                              capture_output=True, text=True, check=False)
    assert validate.returncode == 1 and "sha256" in validate.stderr
    check = node.cli("check-config")
    assert check.returncode == 2 and "sha256" in check.stderr
    node.start()
    rejected = [e for e in node.audit_events() if e["event"] == "model.rejected"]
    assert rejected and "sha256" in rejected[0]["reason"]
    assert storescu(node.port, [_dx(tmp_path, 4)]).returncode == 0
    assert wait_for(lambda: "failed=1" in node.cli("status").stdout, 30)
    assert "not being served" in node.cli("status").stdout
