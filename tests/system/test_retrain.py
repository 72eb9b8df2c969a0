"""scripts/retrain.py: an export's labelled phantoms fine-tune the demo chest model into a new package
that `edge-ai model validate` accepts (a demo of the loop; needs the `train` extra)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_ai import phantoms
from edge_ai.config import MODELS_DIR
from edge_ai.inference.package import load_package

torch = pytest.importorskip("torch", reason="the train extra (pip install torch==2.13.0)")  # CI installs it

ROOT = Path(__file__).resolve().parents[2]


def _export(folder: Path, n: int) -> None:
    """An export as `edge-ai export` lays it out: one folder per series, manifest.jsonl with labels."""
    lines = []
    for i in range(n):
        lesion = i % 2 == 0
        ds, _ = phantoms.dx_case(np.random.default_rng(700 + i), size=256, lesion=lesion)
        (folder / f"s{i:02d}").mkdir(parents=True)
        phantoms.write_dataset(ds, folder / f"s{i:02d}" / "a.dcm")
        lines.append(json.dumps({"series_uid": f"2.25.{i + 1}", "modality": "DX", "files": [f"s{i:02d}/a.dcm"],
                                 "label": lesion, "feedback": [{"agree": False, "findings": []}]}))
    lines.append(json.dumps({"series_uid": "2.25.99", "modality": "DX", "files": [], "label": None}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_retrain_writes_a_package_that_validates(tmp_path: Path) -> None:
    """A new version with its own hash, self-test and drift reference, marked as a demo; validate passes."""
    _export(tmp_path / "export", 12)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "retrain.py"), str(tmp_path / "export"),
                          "--out", str(tmp_path / "pkg"), "--epochs", "2"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["images"] == 12 and report["labelled"] == 12 and report["self_test"] == "pass"
    base, new = load_package(MODELS_DIR / "demo_chest_xr"), load_package(tmp_path / "pkg")
    assert (new.name, new.version) == (base.name, "1.0.1")
    assert new.sha256 != base.sha256
    assert new.reference is not None and new.reference.histogram_edges == base.reference.histogram_edges  # type: ignore[union-attr]
    assert new.reference.histogram != base.reference.histogram  # type: ignore[union-attr]
    assert "Not for diagnostic use" in (new.disclaimer or "") and "DEMO" in (tmp_path / "pkg" / "README.md").read_text()
    meta = yaml.safe_load((tmp_path / "pkg" / "model.yaml").read_text())
    assert meta["preprocessing"] == yaml.safe_load((MODELS_DIR / "demo_chest_xr" / "model.yaml").read_text())[
        "preprocessing"]
    validate = subprocess.run([sys.executable, "-m", "edge_ai", "model", "validate", str(tmp_path / "pkg")],
                              capture_output=True, text=True, timeout=120, check=False)
    assert validate.returncode == 0, validate.stderr
    assert "1.0.1: sha256 ok" in validate.stdout
