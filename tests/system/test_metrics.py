"""Prometheus metrics and `edge-ai status` of a real node, after a study went through it."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import needs_dcmtk
from peers import free_port, storescu, wait_for
from toy_models import make_package

from edge_ai import phantoms

pytestmark = [needs_dcmtk]

FAMILIES = [
    "# TYPE edge_ai_instances_total counter",
    "# TYPE edge_ai_associations_total counter",
    "# TYPE edge_ai_errors_total counter",
    "# TYPE edge_ai_stage_seconds histogram",
    "# TYPE edge_ai_time_to_result_seconds histogram",
    "# TYPE edge_ai_jobs gauge",
    "# TYPE edge_ai_spool_free_bytes gauge",
    "# TYPE edge_ai_drift_score gauge",
    "# TYPE edge_ai_gpus gauge",
]


def _dx_files(folder: Path, seeds: range) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        ds, _ = phantoms.dx_case(np.random.default_rng(seed), size=256, lesion=False)
        paths.append(folder / f"dx{seed}.dcm")
        phantoms.write_dataset(ds, paths[-1])
    return paths


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
        return str(rsp.read().decode())


def _toy_dx(tmp_path: Path) -> dict[str, Any]:
    make_package(tmp_path / "toy-dx", name="toy-dx", size=64, batch_sizes=(1,), modalities=("DX",))
    return {
        "models": [{"path": str(tmp_path / "toy-dx")}],
        "routing": [{"name": "dx", "match": {"Modality": ["DX"]}, "model": "toy-dx"}],
    }


def _metrics_port(node: Any) -> int:
    return int(yaml.safe_load(node.config_path.read_text())["metrics"]["port"])


def test_metrics_show_every_family_after_a_study(node_factory: Any, tmp_path: Path) -> None:
    """After one study and one refused caller, /metrics shows counters, histograms and gauges with samples."""
    node = node_factory(extra=_toy_dx(tmp_path)).start()
    port = _metrics_port(node)
    assert storescu(node.port, _dx_files(tmp_path / "study", range(2))).returncode == 0
    assert storescu(node.port, _dx_files(tmp_path / "other", range(5, 6)), called="NOT_EDGE").returncode != 0
    assert wait_for(lambda: 'edge_ai_jobs{state="delivered"} 2.0' in _scrape(port), 60), node.log()
    text = _scrape(port)
    for family in FAMILIES:
        assert family in text, family
    assert 'edge_ai_instances_total{outcome="stored"} 2.0' in text
    assert 'edge_ai_associations_total{outcome="rejected"} 1.0' in text
    assert 'edge_ai_errors_total{kind="rejected",stage="association"} 1.0' in text
    assert 'edge_ai_stage_seconds_count{stage="inference"} 2.0' in text
    assert 'edge_ai_time_to_result_seconds_count{destination="results"} 2.0' in text
    assert re.search(r'edge_ai_model_info\{model="toy-dx",runtime="onnxruntime[^"]*",version="0.0.1"\}', text)
    if Path("/dev/nvidia0").exists():
        assert "# TYPE edge_ai_gpu_utilization_ratio gauge" in text
        assert "# TYPE edge_ai_gpu_memory_used_bytes gauge" in text


def test_status_command_shows_jobs_results_and_models(node_factory: Any, tmp_path: Path) -> None:
    """`edge-ai status` lists jobs by state, the last result, and runtime and drift per model."""
    node = node_factory(extra=_toy_dx(tmp_path)).start()
    assert storescu(node.port, _dx_files(tmp_path / "study", range(1))).returncode == 0
    assert wait_for(lambda: "delivered=1" in node.cli("status").stdout, 60), node.log()
    out = node.cli("status")
    assert out.returncode == 0, out.stderr
    assert "jobs by state: received=0, ready=0, inferring=0, reported=0, delivered=1, failed=0" in out.stdout
    assert re.search(r"series [0-9.]+ toy-dx 0.0.1 \(onnxruntime[^)]*\): (negative|POSITIVE) p=", out.stdout)
    assert "dead letters: 0" in out.stdout
    assert re.search(r"toy-dx 0.0.1 on onnxruntime\S*: drift no reference", out.stdout), out.stdout


@pytest.mark.parametrize("metrics", [{"enabled": False}, {"port": 0}])
def test_metrics_can_be_switched_off(node_factory: Any, tmp_path: Path, metrics: dict[str, Any]) -> None:
    """metrics.enabled: false or port 0 opens no metrics port."""
    port = free_port()
    node = node_factory(extra={"metrics": {"port": port, **metrics}}).start()
    with pytest.raises(OSError):
        _scrape(port)
    assert node.stop() == 0
