"""Data drift on a real node: a shifted scanner's images raise the score, one audit event, and `status`."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import yaml
from conftest import needs_dcmtk
from peers import storescu, wait_for
from toy_models import make_package

from edge_ai import phantoms

pytestmark = [needs_dcmtk]

ROOT = Path(__file__).resolve().parents[2]
# the demo chest model's preprocessing: 1st..99th percentile window, then (x - 0.5) / 0.25
PREPROCESSING = {
    "window": {"source": "percentile", "percentiles": [1.0, 99.0]},
    "resize": [64, 64],
    "mean": 0.5,
    "std": 0.25,
}


def _normal(seed: int) -> pydicom.Dataset:
    ds, _ = phantoms.dx_case(np.random.default_rng(seed), size=256, lesion=False)
    return ds


def _shifted(seed: int) -> pydicom.Dataset:
    """Another scanner: inverted grey scale, low contrast (30 %), lifted baseline."""
    raw = _normal(seed).pixel_array.astype(np.float32)
    top = float(raw.max())
    return phantoms.dx_dataset(np.clip((top - raw) * 0.3 + 0.35 * top, 0, 4095).astype(np.uint16))


def _write(folder: Path, datasets: list[pydicom.Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.dcm" for i in range(len(datasets))]
    for ds, path in zip(datasets, paths, strict=True):
        phantoms.write_dataset(ds, path)
    return paths


def _package_with_reference(tmp_path: Path) -> Path:
    """A toy DX package whose reference is recomputed by scripts/drift_reference.py from normal studies."""
    pkg = make_package(
        tmp_path / "toy-dx",
        name="toy-dx",
        size=64,
        batch_sizes=(1,),
        modalities=("DX",),
        preprocessing=PREPROCESSING,
    )
    _write(tmp_path / "validation", [_normal(s) for s in range(100, 124)])
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "drift_reference.py"),
            str(pkg),
            str(tmp_path / "validation"),
            "--output",
            str(tmp_path / "reference.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "'images': 24" in out.stderr
    meta = yaml.safe_load((pkg / "model.yaml").read_text())
    meta.update(yaml.safe_load(out.stdout))
    (pkg / "model.yaml").write_text(yaml.safe_dump(meta))
    return pkg


def _drift_events(node: Any) -> list[dict[str, Any]]:
    return [e for e in node.audit_events() if e["event"] == "drift.detected"]


def _delivered(node: Any, n: int) -> bool:
    return f"delivered={n}," in node.cli("status").stdout


def test_shifted_scanner_raises_drift(node_factory: Any, tmp_path: Path) -> None:
    """Ten inverted, low-contrast images after ten normal ones cross the threshold: one audit event."""
    pkg = _package_with_reference(tmp_path)
    node = node_factory(
        extra={
            "models": [{"path": str(pkg)}],
            "routing": [{"name": "dx", "match": {"Modality": ["DX"]}, "model": "toy-dx"}],
            "drift": {"window": 10, "threshold": 0.25},
        }
    ).start()
    metrics_port = yaml.safe_load(node.config_path.read_text())["metrics"]["port"]

    normal = _write(tmp_path / "normal", [_normal(s) for s in range(200, 210)])
    assert storescu(node.port, normal).returncode == 0
    assert wait_for(lambda: _delivered(node, 10), 90), node.log()
    assert _drift_events(node) == []
    assert wait_for(lambda: "drift 0." in node.cli("status").stdout, 15)  # snapshot: a score, under threshold
    status = node.cli("status").stdout
    assert "(threshold 0.25, ok)" in status, status

    shifted = _write(tmp_path / "shifted", [_shifted(s) for s in range(300, 310)])
    assert storescu(node.port, shifted).returncode == 0
    assert wait_for(lambda: _delivered(node, 20), 90), node.log()
    events = _drift_events(node)
    assert len(events) == 1, events
    assert events[0]["model"] == "toy-dx" and events[0]["score"] > 0.25 and events[0]["window"] == 10
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as rsp:
        lines = rsp.read().decode().splitlines()
    line = next(ln for ln in lines if ln.startswith('edge_ai_drift_score{model="toy-dx"}'))
    assert float(line.split()[-1]) > 0.25
    assert "drift_detected" in node.log()  # the warning, once
    assert wait_for(lambda: "DRIFT" in node.cli("status").stdout, 15)
    assert node.cli("audit", "verify").returncode == 0
