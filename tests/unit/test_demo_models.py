"""Shipped demo model packages: load, self-test on ONNX Runtime CPU, and find phantom lesions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ai import phantoms
from edge_ai.imaging import pixels
from edge_ai.inference.package import ModelPackage, load_package

ort = pytest.importorskip("onnxruntime")

MODELS = Path(__file__).resolve().parents[2] / "edge_ai" / "models"
PACKAGES = {"demo-chest-xr": MODELS / "demo_chest_xr", "demo-ct-lesion": MODELS / "demo_ct"}
SEEDS = (7001, 7002, 7003, 7004, 7005)  # not in any training/validation/test range of the script


def _load(name: str) -> ModelPackage:
    return load_package(PACKAGES[name])


def _run(pkg: ModelPackage, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(pkg.onnx_path), providers=["CPUExecutionProvider"])
    p, b = sess.run([pkg.outputs["probability"].name, pkg.outputs["box"].name], {pkg.input.name: batch})
    return np.asarray(p), np.asarray(b)


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_package_loads_with_hash_and_metadata(name: str) -> None:
    """Each shipped package passes the loader's schema and sha256 check and carries its disclaimer."""
    pkg = _load(name)
    assert pkg.name == name
    assert pkg.disclaimer and "not for diagnostic use" in pkg.disclaimer.lower()
    assert 0.0 < pkg.threshold < 1.0
    assert pkg.reference is not None and len(pkg.reference.histogram) == 32
    assert pkg.onnx_path.stat().st_size < 2_000_000
    readme = (pkg.onnx_path.parent / "README.md").read_text().lower()
    assert "not for diagnostic use" in readme


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_selftest_reproduces_on_onnxruntime_cpu(name: str) -> None:
    """The package's own self-test gives the recorded outputs on ONNX Runtime CPU."""
    pkg = _load(name)
    ref = np.load(pkg.selftest_path)
    assert ref["input"].shape[0] in pkg.batch_sizes
    p, b = _run(pkg, ref["input"])
    assert p.shape == (len(ref["input"]),) and b.shape == (len(ref["input"]), 4)
    assert np.allclose(p, ref["probability"], atol=pkg.selftest.atol, rtol=pkg.selftest.rtol)
    assert np.allclose(b, ref["box"], atol=pkg.selftest.atol, rtol=pkg.selftest.rtol)


def _centre_px(box: np.ndarray, columns: int, rows: int) -> tuple[float, float]:
    return float((box[0] + box[2]) / 2 * columns), float((box[1] + box[3]) / 2 * rows)


def _chest_runs(pkg: ModelPackage) -> list[tuple[float, float, bool]]:
    """(probability, lesion probability or clear, box centre on the nodule) for each seed."""
    out = []
    for seed in SEEDS:
        ds, truth = phantoms.dx_case(np.random.default_rng(seed), lesion=True)
        assert truth is not None
        p, b = _run(pkg, pixels.preprocess(ds, pkg.preprocessing)[None])
        cx, cy = _centre_px(b[0], ds.Columns, ds.Rows)
        clear, _ = phantoms.dx_case(np.random.default_rng(seed + 100), lesion=False)
        q, _ = _run(pkg, pixels.preprocess(clear, pkg.preprocessing)[None])
        out.append((float(p[0]), float(q[0]), truth.contains(cx, cy, margin=0.5 * truth.radius)))
    return out


def test_chest_model_flags_nodules_and_passes_clear_lungs() -> None:
    """Most chest phantoms with a nodule score at or above threshold; most clear ones score below."""
    pkg = _load("demo-chest-xr")
    runs = _chest_runs(pkg)
    hits = sum(p >= pkg.threshold for p, _, _ in runs)
    clears = sum(q < pkg.threshold for _, q, _ in runs)
    assert hits >= 4 and clears >= 4, f"hits {hits}/5, clear {clears}/5"


def test_chest_model_box_lands_on_nodule() -> None:
    """Most flagged chest nodules get a box centred on the nodule (within half a radius of its rim)."""
    pkg = _load("demo-chest-xr")
    on = sum(p >= pkg.threshold and inside for p, _, inside in _chest_runs(pkg))
    assert on >= 4, f"box on nodule {on}/5"


def test_ct_model_finds_lesion_series_and_passes_clean_series() -> None:
    """Most CT series with a lesion score above threshold with the box on it; clean ones stay below."""
    pkg = _load("demo-ct-lesion")
    hits = clears = 0
    for seed in SEEDS[:3]:
        for lesion in (True, False):
            series, truth = phantoms.ct_case(
                np.random.default_rng(seed + (0 if lesion else 100)), lesion=lesion
            )
            batch = np.stack([pixels.preprocess(ds, pkg.preprocessing) for ds in series])
            p, b = _run(pkg, batch)
            top = int(np.argmax(p))
            if lesion:
                assert truth is not None
                cx, cy = _centre_px(b[top], series[top].Columns, series[top].Rows)
                hits += bool(p[top] >= pkg.threshold and truth.on_slice(top) and truth.contains(cx, cy))
            else:
                clears += bool(p.max() < pkg.threshold)
    assert hits >= 2 and clears >= 2, f"hits {hits}/3, clear {clears}/3"
