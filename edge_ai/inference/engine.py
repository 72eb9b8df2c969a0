"""The Engine protocol and the registry that picks a backend for a model package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_ai.errors import ModelError
from edge_ai.inference.package import ModelPackage


@dataclass(frozen=True)
class Outputs:
    probability: np.ndarray  # [N] float32
    box: np.ndarray  # [N, 4] float32, x0 y0 x1 y1 in 0..1 of the input


class Engine(Protocol):
    """A loaded model on one runtime; `run` is called from one worker thread at a time."""

    runtime: str
    package: ModelPackage

    def run(self, batch: np.ndarray) -> Outputs: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def available(self) -> tuple[bool, str]:
        """Whether this runtime can serve here, and why not."""

    def load(self, package: ModelPackage, cache_root: Path | None = None) -> Engine: ...


_BACKENDS: dict[str, Backend] = {}
# `runtime: auto` tries these in order.
AUTO_ORDER = ("tensorrt", "onnxruntime")


def register(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    return backend


def backends() -> dict[str, Backend]:
    _ensure_builtin()
    return dict(_BACKENDS)


def _ensure_builtin() -> None:
    # Each module registers its backend on import; neither imports its runtime until asked.
    from edge_ai.inference import onnxruntime as _ort  # noqa: F401
    from edge_ai.inference import tensorrt as _trt  # noqa: F401


def load_engine(
    package: ModelPackage,
    runtime: str,
    cache_root: Path | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> Engine:
    """Load `package` on `runtime` ('auto' = the first of AUTO_ORDER that loads).

    With 'auto', a runtime that is unavailable or fails to load the package is skipped (and
    `on_skip(runtime, reason)` told why), so a GPU problem falls back to ONNX Runtime.

    Raises:
        ModelError: no requested runtime can serve the package here.
    """
    _ensure_builtin()
    order = AUTO_ORDER if runtime == "auto" else (runtime,)
    reasons = []
    for name in order:
        backend = _BACKENDS.get(name)
        why = "not installed" if backend is None else backend.available()[1]
        if backend is not None and not why:
            try:
                return backend.load(package, cache_root)
            except ModelError as exc:
                why = str(exc)
        reasons.append(f"{name}: {why}")
        if on_skip:
            on_skip(name, why)
    raise ModelError(f"model {package.name}: no usable runtime ({'; '.join(reasons)})")


def self_test(engine: Engine) -> tuple[bool, str]:
    """Run the package's golden input and compare with its expected outputs."""
    pkg = engine.package
    try:
        golden = np.load(pkg.selftest_path)
        out = engine.run(golden["input"].astype(np.float32))
    except Exception as exc:  # any failure here means the model must not serve
        return False, f"self-test could not run: {exc}"
    for name in ("probability", "box"):
        got = getattr(out, name)
        want = golden[name]
        if got.shape != want.shape:
            return False, f"self-test {name}: shape {got.shape} != expected {want.shape}"
        atol = max(pkg.selftest.atol, pkg.selftest.fp16_atol) if "fp16" in engine.runtime else pkg.selftest.atol
        if not np.allclose(got, want, atol=atol, rtol=pkg.selftest.rtol):
            worst = float(np.max(np.abs(got - want)))
            return False, f"self-test {name}: max difference {worst:.3g} exceeds tolerance"
    return True, "outputs within tolerance"
