"""Data drift: the preprocessed inputs a model sees now, against the statistics it was validated on.

Each model package carries `reference:` (histogram of preprocessed input values over fixed bin
edges, mean, std). The monitor keeps, per model, the histograms of the last `window` images and
scores their mean against the reference with the population stability index (PSI):

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

(a = actual bin fractions, e = expected; both floored at a small epsilon so empty bins are finite).
Rules of thumb: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 a different population. A score is
exported once the window is full; crossing `threshold` writes one `drift.detected` audit event and
one warning per episode; the episode ends (and re-arms) when the score drops back below it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_ai.inference.package import DriftReference

_EPS = 1e-4


def image_histogram(tensor: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fractions of the tensor's values per bin; values outside the edges count in the end bins."""
    values = np.clip(np.asarray(tensor, dtype=np.float32).ravel(), edges[0], edges[-1])
    counts, _ = np.histogram(values, bins=edges)
    total = counts.sum()
    return counts / total if total else np.zeros(len(edges) - 1)


def psi(actual: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of two bin-fraction vectors of equal length."""
    a = np.clip(np.asarray(actual, dtype=np.float64), _EPS, None)
    e = np.clip(np.asarray(expected, dtype=np.float64), _EPS, None)
    a, e = a / a.sum(), e / e.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def reference_from_tensors(tensors: Iterable[np.ndarray], edges: Iterable[float]) -> dict[str, Any]:
    """The `reference:` block of model.yaml for these preprocessed inputs (same form the monitor reads)."""
    edge_arr = np.asarray(list(edges), dtype=np.float64)
    counts = np.zeros(len(edge_arr) - 1)
    n, total, total_sq = 0, 0.0, 0.0
    for t in tensors:
        x = np.asarray(t, dtype=np.float64).ravel()
        c, _ = np.histogram(np.clip(x, edge_arr[0], edge_arr[-1]), bins=edge_arr)
        counts += c
        n += x.size
        total += float(x.sum())
        total_sq += float(np.square(x).sum())
    if n == 0:
        raise ValueError("no tensors to compute a reference from")
    mean = total / n
    std = float(np.sqrt(max(0.0, total_sq / n - mean * mean)))
    return {
        "histogram_edges": [round(float(e), 6) for e in edge_arr],
        "histogram": [round(float(h), 6) for h in counts / counts.sum()],
        "mean": round(mean, 6),
        "std": round(std, 6),
    }


@dataclass(frozen=True)
class DriftState:
    model: str
    score: float | None  # None until the window is full
    samples: int
    window: int
    drifting: bool
    episodes: int
    mean: float | None  # mean of the window's image means (reference: reference_mean)
    reference_mean: float


class _ModelWindow:
    def __init__(self, reference: DriftReference, window: int) -> None:
        self.reference = reference
        self.edges = np.asarray(reference.histogram_edges, dtype=np.float64)
        self.expected = np.asarray(reference.histogram, dtype=np.float64)
        if len(self.edges) != len(self.expected) + 1:
            raise ValueError("reference: histogram_edges must have one more value than histogram")
        self.hists: deque[np.ndarray] = deque(maxlen=window)
        self.means: deque[float] = deque(maxlen=window)
        self.score: float | None = None
        self.drifting = False
        self.episodes = 0
        # running sums of the window (observe runs per image while series arrive: O(bins), not O(window));
        # summed afresh once per window's worth of images, so rounding never accumulates
        self._hist_sum = np.zeros(len(self.expected))
        self._mean_sum = 0.0
        self._until_resum = window

    def add(self, hist: np.ndarray, mean: float) -> None:
        if len(self.hists) == self.hists.maxlen:
            self._hist_sum -= self.hists[0]
            self._mean_sum -= self.means[0]
        self.hists.append(hist)
        self.means.append(mean)
        self._until_resum -= 1
        if self._until_resum <= 0:
            self._hist_sum = np.sum(self.hists, axis=0)
            self._mean_sum = float(np.sum(self.means))
            self._until_resum = len(self.hists)
        else:
            self._hist_sum += hist
            self._mean_sum += mean

    def mean_histogram(self) -> np.ndarray:
        return self._hist_sum / len(self.hists)

    def mean_of_means(self) -> float | None:
        return self._mean_sum / len(self.means) if self.means else None


class DriftMonitor:
    """Thread-safe; `observe` is called from the inference worker for every preprocessed image.

    Args:
        references: model name -> its package's reference (None: not monitored).
        window: images per rolling window.
        threshold: PSI at or above which the inputs count as drifted.
        audit: the audit log's record(event, **fields).
        log: a structlog logger.
    """

    def __init__(
        self,
        references: Mapping[str, DriftReference | None],
        window: int,
        threshold: float,
        audit: Callable[..., None],
        log: Any,
    ) -> None:
        self.window = window
        self.threshold = threshold
        self.audit = audit
        self.log = log
        self._lock = threading.Lock()
        self._models = {
            name: _ModelWindow(ref, window) for name, ref in references.items() if ref is not None
        }

    def set_references(
        self, references: Mapping[str, DriftReference | None], window: int, threshold: float
    ) -> None:
        """After a reload: windows of models whose reference and window size are unchanged carry on."""
        with self._lock:
            keep = window == self.window
            models = {}
            for name, ref in references.items():
                if ref is None:
                    continue
                old = self._models.get(name)
                models[name] = (
                    old if keep and old is not None and old.reference == ref else _ModelWindow(ref, window)
                )
            self._models, self.window, self.threshold = models, window, threshold

    @property
    def models(self) -> list[str]:
        return sorted(self._models)

    def observe(self, model: str, tensor: np.ndarray) -> None:
        """Add one preprocessed image of `model`; rescore and handle episode edges."""
        mw = self._models.get(model)
        if mw is None:
            return
        hist = image_histogram(tensor, mw.edges)
        with self._lock:
            mw.add(hist, float(np.mean(tensor)))
            if len(mw.hists) < self.window:
                return
            mw.score = psi(mw.mean_histogram(), mw.expected)
            started = mw.score >= self.threshold and not mw.drifting
            ended = mw.score < self.threshold and mw.drifting
            if started:
                mw.drifting = True
                mw.episodes += 1
            elif ended:
                mw.drifting = False
            score, window_mean = mw.score, mw.mean_of_means() or 0.0  # the window is full
        if started:
            fields = {
                "model": model,
                "score": round(score, 4),
                "threshold": self.threshold,
                "window": self.window,
                "window_mean": round(window_mean, 4),
                "reference_mean": mw.reference.mean,
            }
            self.audit("drift.detected", **fields)
            self.log.warning("drift_detected", **fields)
        elif ended:
            self.audit("drift.cleared", model=model, score=round(score, 4), threshold=self.threshold)
            self.log.info("drift_cleared", model=model, score=round(score, 4), threshold=self.threshold)

    def states(self) -> list[DriftState]:
        with self._lock:
            return [
                DriftState(
                    model=name,
                    score=mw.score,
                    samples=len(mw.hists),
                    window=self.window,
                    drifting=mw.drifting,
                    episodes=mw.episodes,
                    mean=mw.mean_of_means(),
                    reference_mean=mw.reference.mean,
                )
                for name, mw in sorted(self._models.items())
            ]

    def scores(self) -> dict[str, float | None]:
        return {s.model: s.score for s in self.states()}
