"""A shadow version beside the live one on the very same tensors (service/workers.py Pipeline).

Where the shadow package takes the same input as the live one (preprocessing, input shape, batch
sizes), each batch the live engine ran is run on the shadow engine too: no second read or decode
of the series. Otherwise the pipeline re-reads the series for the shadow with its own spec.
"""

from __future__ import annotations

import time

import numpy as np

from edge_ai.domain import InferenceResult
from edge_ai.inference.aggregate import ImageInfo, summarize
from edge_ai.inference.engine import Engine, Outputs
from edge_ai.inference.package import ModelPackage


class Beside:
    """A shadow engine run on each batch the live engine just ran: same tensors, no second decode.
    Its failure is kept for the audit, never raised into the live job."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.infos: list[ImageInfo] = []
        self.probs: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        self.error: Exception | None = None
        self.seconds = 0.0

    def run(self, batch: np.ndarray, n: int) -> None:
        if self.error is not None:
            return
        started = time.monotonic()
        try:
            out = self.engine.run(batch)
            self.probs.append(out.probability[:n])
            self.boxes.append(out.box[:n])
        except Exception as exc:  # reported by result(), in the shadow's audit line
            self.error = exc
        self.seconds += time.monotonic() - started

    def result(self) -> InferenceResult:
        if self.error is not None:
            raise self.error
        pkg = self.engine.package
        return summarize(pkg, self.engine.runtime, self.infos,
                         Outputs(np.concatenate(self.probs), np.concatenate(self.boxes)))


def same_input(a: ModelPackage, b: ModelPackage) -> bool:
    """Whether two packages take the very same tensors (so a shadow can share the live run's)."""
    return (a.preprocessing, a.input, sorted(a.batch_sizes)) == (b.preprocessing, b.input, sorted(b.batch_sizes))
