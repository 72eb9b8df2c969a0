"""TensorRT backend logic that needs no TensorRT: cache keys, stale plans, profiles, fallback.

TensorRT cannot be installed on these machines (its libraries download from NVIDIA's index), so
the tests marked `tensorrt` run only where it exists; the rest use fakes, and say so.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from toy_models import make_package

from edge_ai.errors import ModelError
from edge_ai.inference import engine as engine_mod
from edge_ai.inference.engine import Outputs, load_engine, self_test
from edge_ai.inference.package import load_package
from edge_ai.inference.tensorrt import EngineCache, EngineKey, TensorRTBackend, check_batch, profile_shapes

KEY = EngineKey("ab" * 32, "NVIDIA H100 80GB HBM3", "9.0", "10.3.0", "fp16", (1, 8, 16))


def test_engine_key_names_every_dependency() -> None:
    """A plan's file name changes when the model, GPU, capability, TensorRT, precision or batches change."""
    names = {KEY.filename}
    for change in ({"model_sha256": "cd" * 32}, {"gpu_name": "NVIDIA H200"}, {"compute_capability": "8.9"},
                   {"tensorrt_version": "10.4.0"}, {"precision": "fp32"}, {"batch_sizes": (1, 8)}):
        names.add(dataclasses.replace(KEY, **change).filename)  # type: ignore[arg-type]
    assert len(names) == 7
    assert "/" not in KEY.filename and KEY.filename.endswith(".plan")
    assert dataclasses.replace(KEY).filename == KEY.filename


def test_cache_round_trip(tmp_path: Path) -> None:
    """A stored plan is loaded back for exactly the same key."""
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"plan-bytes")
    assert cache.load(KEY) == b"plan-bytes"


@pytest.mark.parametrize("change", [{"gpu_name": "NVIDIA A100"}, {"tensorrt_version": "10.9.0"},
                                    {"precision": "fp32"}, {"compute_capability": "8.0"}])
def test_stale_plan_is_never_loaded(tmp_path: Path, change: dict[str, str]) -> None:
    """A plan built for another GPU or TensorRT is not loaded, even if copied under the new key's name."""
    cache = EngineCache(tmp_path)
    old_plan, old_meta = cache.paths(KEY)
    cache.store(KEY, b"old")
    new = dataclasses.replace(KEY, **change)  # type: ignore[arg-type]
    assert cache.load(new) is None
    new_plan, new_meta = cache.paths(new)
    new_plan.write_bytes(old_plan.read_bytes())
    new_meta.write_bytes(old_meta.read_bytes())
    assert cache.load(new) is None


def test_corrupt_plan_is_rebuilt_not_loaded(tmp_path: Path) -> None:
    """A plan whose bytes no longer match its recorded sha256 is treated as missing."""
    cache = EngineCache(tmp_path)
    plan, _ = cache.paths(KEY)
    cache.store(KEY, b"good plan")
    plan.write_bytes(b"tampered")
    assert cache.load(KEY) is None


def test_profile_spans_package_batch_sizes(tmp_path: Path) -> None:
    """The optimisation profile runs from the smallest to the largest declared batch."""
    pkg = load_package(make_package(tmp_path / "m", size=32, batch_sizes=(8, 1, 16)))
    assert profile_shapes(pkg) == ((1, 1, 32, 32), (16, 1, 32, 32), (16, 1, 32, 32))
    check_batch(pkg, np.zeros((16, 1, 32, 32), np.float32))
    with pytest.raises(ModelError, match=r"outside 1\.\.16"):
        check_batch(pkg, np.zeros((17, 1, 32, 32), np.float32))
    with pytest.raises(ModelError, match="expected"):
        check_batch(pkg, np.zeros((2, 1, 64, 64), np.float32))


def test_auto_falls_back_to_onnxruntime_without_tensorrt(tmp_path: Path) -> None:
    """`runtime: auto` serves on ONNX Runtime where TensorRT is absent, and says why it skipped TensorRT."""
    if TensorRTBackend().available()[0]:
        pytest.skip("TensorRT is present here")
    pkg = load_package(make_package(tmp_path / "m"))
    skipped: list[tuple[str, str]] = []
    engine = load_engine(pkg, "auto", tmp_path / "engines", on_skip=lambda r, w: skipped.append((r, w)))
    assert engine.runtime.startswith("onnxruntime")
    assert skipped and skipped[0][0] == "tensorrt" and "not installed" in skipped[0][1]
    with pytest.raises(ModelError, match="tensorrt: TensorRT is not installed"):
        load_engine(pkg, "tensorrt", tmp_path / "engines")


class _BrokenTensorRT:
    """A fake TensorRT backend (no TensorRT here) that is 'available' but whose engine build fails."""

    name = "tensorrt"

    def available(self) -> tuple[bool, str]:
        return True, ""

    def load(self, package: object, cache_root: Path | None = None) -> object:
        raise ModelError("TensorRT engine build failed")


def test_failed_engine_build_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU whose engine build fails still serves the model, on ONNX Runtime."""
    engine_mod.backends()
    monkeypatch.setitem(engine_mod._BACKENDS, "tensorrt", _BrokenTensorRT())
    pkg = load_package(make_package(tmp_path / "m"))
    skipped: list[tuple[str, str]] = []
    engine = load_engine(pkg, "auto", tmp_path, on_skip=lambda r, w: skipped.append((r, w)))
    assert engine.runtime == "onnxruntime-cpu"
    assert skipped == [("tensorrt", "TensorRT engine build failed")]


class _Shifted:
    """A fake engine returning the golden outputs plus `delta` (stands in for FP16 rounding)."""

    def __init__(self, package: object, runtime: str, delta: float) -> None:
        self.package, self.runtime, self.delta = package, runtime, delta

    def run(self, batch: np.ndarray) -> Outputs:
        golden = np.load(self.package.selftest_path)  # type: ignore[attr-defined]
        return Outputs(golden["probability"] + self.delta, golden["box"] + self.delta)

    def close(self) -> None:
        pass


def test_self_test_tolerance_follows_precision(tmp_path: Path) -> None:
    """An FP16 engine may differ by fp16_atol; an FP32 runtime with the same difference fails its self-test."""
    pkg = load_package(make_package(tmp_path / "m"))
    assert self_test(_Shifted(pkg, "tensorrt-fp16", 0.01))[0]  # type: ignore[arg-type]
    ok, why = self_test(_Shifted(pkg, "onnxruntime-cpu", 0.01))  # type: ignore[arg-type]
    assert not ok and "exceeds tolerance" in why


def test_build_engine_command_says_why_not(tmp_path: Path) -> None:
    """`edge-ai model build-engine` exits 1 with the reason where TensorRT or a GPU is missing."""
    if TensorRTBackend().available()[0]:
        pytest.skip("TensorRT is present here")
    pkg = make_package(tmp_path / "m")
    out = subprocess.run([sys.executable, "-m", "edge_ai", "model", "build-engine", str(pkg)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1
    assert "TensorRT is not installed" in out.stderr


@pytest.mark.tensorrt
def test_real_engine_builds_caches_and_matches_onnxruntime(tmp_path: Path) -> None:
    """Where TensorRT and a GPU exist: the plan is built once, cached, and passes the self-test."""
    pytest.importorskip("tensorrt")
    backend = TensorRTBackend()
    if not backend.available()[0]:
        pytest.skip(backend.available()[1])
    pkg = load_package(make_package(tmp_path / "m"))
    _, plan, built = backend.build(pkg, tmp_path / "engines")
    assert built and plan.exists()
    assert backend.build(pkg, tmp_path / "engines")[2] is False
    engine = backend.load(pkg, tmp_path / "engines")
    assert self_test(engine)[0]
    engine.close()
