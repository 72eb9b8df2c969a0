"""Drift monitor: PSI against the model's reference, one audit event and warning per episode."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge_ai.inference.package import DriftReference
from edge_ai.observability.drift import DriftMonitor, image_histogram, psi, reference_from_tensors

EDGES = np.linspace(-2.0, 2.0, 33)


def _normal(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, 0.5, (1, 64, 64)).astype(np.float32)


def _shifted(rng: np.random.Generator) -> np.ndarray:
    return (-0.3 * _normal(rng) + 1.2).astype(np.float32)  # inverted, low contrast, brighter


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append((f"log.warning.{event}", fields))

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((f"log.info.{event}", fields))

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


@pytest.fixture
def reference() -> DriftReference:
    rng = np.random.default_rng(1)
    return DriftReference(**reference_from_tensors([_normal(rng) for _ in range(40)], EDGES))


def _monitor(reference: DriftReference, window: int = 10) -> tuple[DriftMonitor, Recorder]:
    rec = Recorder()
    return DriftMonitor({"demo": reference, "no-ref": None}, window, 0.25, rec, rec), rec


def test_same_population_scores_low(reference: DriftReference) -> None:
    """Images like the reference keep the score well under the threshold and raise nothing."""
    monitor, rec = _monitor(reference)
    rng = np.random.default_rng(2)
    for _ in range(30):
        monitor.observe("demo", _normal(rng))
    score = monitor.scores()["demo"]
    assert score is not None and score < 0.05
    assert rec.events == []


def test_shifted_scanner_raises_one_event_per_episode(reference: DriftReference) -> None:
    """Ten shifted images after ten normal ones cross the threshold: one audit event, one warning."""
    monitor, rec = _monitor(reference)
    rng = np.random.default_rng(3)
    for _ in range(10):
        monitor.observe("demo", _normal(rng))
    for _ in range(20):
        monitor.observe("demo", _shifted(rng))
    assert rec.names() == ["drift.detected", "log.warning.drift_detected"]
    fields = rec.events[0][1]
    assert fields["model"] == "demo" and fields["score"] > 0.25 and fields["window"] == 10
    state = monitor.states()[0]
    assert state.drifting and state.episodes == 1


def test_episode_ends_and_rearms(reference: DriftReference) -> None:
    """After the inputs return to normal the episode closes, and a new shift is reported again."""
    monitor, rec = _monitor(reference)
    rng = np.random.default_rng(4)
    for batch in (_shifted, _normal, _shifted):
        for _ in range(10):
            monitor.observe("demo", batch(rng))
    assert rec.names().count("drift.detected") == 2
    assert "drift.cleared" in rec.names()
    assert monitor.states()[0].episodes == 2


def test_score_is_the_window_of_the_last_images(reference: DriftReference) -> None:
    """Kept as running sums, the score and mean are still those of exactly the last `window` images:
    checked at every image over several windows of mixed populations against the direct computation."""
    monitor, _ = _monitor(reference, window=7)
    rng = np.random.default_rng(8)
    seen: list[np.ndarray] = []
    for i in range(40):
        image = _shifted(rng) if (i // 5) % 2 else _normal(rng)
        monitor.observe("demo", image)
        seen.append(image)
        last = seen[-7:]
        state = monitor.states()[0]
        assert state.mean == pytest.approx(np.mean([float(np.mean(t)) for t in last]), abs=1e-12)
        if len(seen) >= 7:
            expected = psi(np.mean([image_histogram(t, EDGES) for t in last], axis=0), reference.histogram)
            assert monitor.scores()["demo"] == pytest.approx(expected, abs=1e-12)


def test_no_score_until_window_full(reference: DriftReference) -> None:
    """A half-full window exports no score (a few images say nothing about a population)."""
    monitor, _ = _monitor(reference)
    rng = np.random.default_rng(5)
    for _ in range(9):
        monitor.observe("demo", _shifted(rng))
    assert monitor.scores() == {"demo": None}
    assert monitor.states()[0].samples == 9


def test_models_without_reference_are_not_monitored(reference: DriftReference) -> None:
    """A package without `reference:` is skipped, and an unknown model name is ignored."""
    monitor, _ = _monitor(reference)
    monitor.observe("no-ref", np.zeros((1, 8, 8)))
    monitor.observe("unknown", np.zeros((1, 8, 8)))
    assert monitor.models == ["demo"]


def test_psi_properties() -> None:
    """PSI is 0 for identical distributions, positive otherwise, and finite with empty bins."""
    e = np.array([0.25, 0.25, 0.5, 0.0])
    assert psi(e, e) == pytest.approx(0.0, abs=1e-9)
    assert psi(np.array([0.0, 0.0, 0.0, 1.0]), e) > 1.0
    assert np.isfinite(psi(np.array([1.0, 0.0, 0.0, 0.0]), e))


def test_image_histogram_clips_into_end_bins() -> None:
    """Values beyond the reference's range count in its first and last bins, so fractions sum to 1."""
    h = image_histogram(np.array([-10.0, 0.1, 10.0]), np.array([-1.0, 0.0, 1.0]))
    assert h.tolist() == pytest.approx([1 / 3, 2 / 3])


def test_reference_block_matches_model_yaml_schema() -> None:
    """The recomputed reference validates as a model.yaml `reference:` block."""
    ref = reference_from_tensors([np.full((1, 4, 4), 0.5)], EDGES)
    parsed = DriftReference(**ref)
    assert parsed.mean == 0.5 and parsed.std == 0.0
    assert sum(parsed.histogram) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no tensors"):
        reference_from_tensors([], EDGES)


def test_reload_keeps_windows_of_unchanged_models(reference: DriftReference) -> None:
    """A config reload keeps the rolling window of a model whose reference did not change."""
    monitor, _ = _monitor(reference)
    rng = np.random.default_rng(6)
    for _ in range(4):
        monitor.observe("demo", _normal(rng))
    monitor.set_references({"demo": reference, "other": reference}, 10, 0.3)
    assert [(s.model, s.samples) for s in monitor.states()] == [("demo", 4), ("other", 0)]
    monitor.set_references({"demo": reference}, 20, 0.3)
    assert monitor.states()[0].samples == 0 and monitor.window == 20


def test_shipped_chest_reference_tells_a_shifted_scanner_apart() -> None:
    """Against the demo chest model's reference, normal phantoms score low, inverted dim ones high."""
    from pathlib import Path

    from edge_ai import phantoms
    from edge_ai.imaging import pixels
    from edge_ai.inference.package import load_package

    folder = Path(__file__).resolve().parents[2] / "edge_ai" / "models" / "demo_chest_xr"
    if not (folder / "model.yaml").exists():
        pytest.skip("demo chest package not built in this checkout")
    pkg = load_package(folder, verify_hash=False)
    assert pkg.reference is not None
    edges, expected = np.asarray(pkg.reference.histogram_edges), np.asarray(pkg.reference.histogram)

    def window(seeds: range, shifted: bool) -> float:
        hists = []
        for seed in seeds:
            ds, _ = phantoms.dx_case(np.random.default_rng(seed), size=256, lesion=False)
            if shifted:
                raw = ds.pixel_array.astype(np.float32)
                top = float(raw.max())
                ds = phantoms.dx_dataset(np.clip((top - raw) * 0.3 + 0.35 * top, 0, 4095).astype(np.uint16))
            hists.append(image_histogram(pixels.preprocess(ds, pkg.preprocessing), edges))
        return psi(np.mean(hists, axis=0), expected)

    assert window(range(200, 210), shifted=False) < 0.25 < window(range(300, 310), shifted=True)
