"""The status snapshot the running node writes for `edge-ai status`."""

from __future__ import annotations

import time
from pathlib import Path

from cycles import cyclic_garbage

from edge_ai.observability.drift import DriftState
from edge_ai.service import status


def _snap() -> dict[str, object]:
    drift = [
        DriftState("demo", 0.41, 10, 10, True, 1, 0.1, 0.0),
        DriftState("ct", None, 3, 10, False, 0, 0.0, 0.0),
    ]
    return status.snapshot(
        pid=42,
        version="0.1.0",
        started_at=time.time(),
        threshold=0.25,
        counts={"received": 1},
        models={"demo": ("1.0.0", "onnxruntime"), "ct": ("2.0", "tensorrt"), "plain": ("1", "onnxruntime")},
        drift=drift,
        metrics_port=9464,
    )


def test_snapshot_round_trips_atomically(tmp_path: Path) -> None:
    """What the node writes is what `status` reads back, and no temporary file is left behind."""
    path = tmp_path / "var" / status.FILENAME
    status.write(path, _snap())
    status.write(path, _snap())
    data = status.read(path)
    assert data is not None and data["models"]["demo"]["drift"]["score"] == 0.41
    assert [p.name for p in path.parent.iterdir()] == [status.FILENAME]


def test_rendered_lines_show_runtime_and_drift_per_model() -> None:
    """Each model shows its runtime and drift verdict: DRIFT, warming up, or no reference."""
    lines = status.render_models(_snap())
    assert any("demo 1.0.0 on onnxruntime: drift 0.410 (threshold 0.25, DRIFT)" in ln for ln in lines)
    assert any("ct 2.0 on tensorrt: drift warming up (3/10 images)" in ln for ln in lines)
    assert any("plain 1 on onnxruntime: drift no reference" in ln for ln in lines)


def test_stale_snapshot_says_node_not_running() -> None:
    """A snapshot much older than the write interval is flagged: the node is not running."""
    data = _snap()
    assert "not running" in status.render_models(data, now=float(data["time"]) + 60)[0]  # type: ignore[arg-type]
    assert status.read(Path("/nonexistent/status.json")) is None


def test_the_snapshot_written_every_few_seconds_leaves_nothing_for_the_collector(tmp_path: Path) -> None:
    """The node writes its snapshot every 5 s for its whole life: what a write makes is freed at once,
    and the file still reads back."""
    path = tmp_path / status.FILENAME
    status.write(path, _snap())

    def writes() -> None:
        for _ in range(3):
            status.write(path, _snap())

    assert cyclic_garbage(writes, "json") == []
    assert status.read(path) is not None
