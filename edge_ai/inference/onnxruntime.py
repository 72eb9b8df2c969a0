"""ONNX Runtime backend: CUDA provider where onnxruntime-gpu offers it, else CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_ai.errors import ModelError
from edge_ai.inference.engine import Outputs, register
from edge_ai.inference.package import ModelPackage
from edge_ai.inference.threads import made_in_background


class OnnxRuntimeEngine:
    def __init__(self, package: ModelPackage) -> None:
        import onnxruntime as ort

        self.package = package
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # ONNX Runtime's intra-op workers busy-wait between runs by default. The worker preprocesses
        # the next batch in Python between runs, and on a 2-core appliance the spinning thread took
        # the other core from it: 9.0 -> 6.4 ms per CT slice of preprocessing with spinning off,
        # while the run itself stays within noise (docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:  # its intra-op threads yield to reception, as the worker's own do (inference/threads.py)
            self._session = made_in_background(
                lambda: ort.InferenceSession(str(package.onnx_path), options, providers=providers))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"model {package.name}: onnxruntime cannot load model.onnx: {exc}") from exc
        used = self._session.get_providers()[0]
        self.runtime = "onnxruntime-cuda" if used == "CUDAExecutionProvider" else "onnxruntime-cpu"
        names = {o.name for o in self._session.get_outputs()}
        self._outputs = [package.outputs["probability"].name, package.outputs["box"].name]
        missing = [n for n in self._outputs if n not in names]
        if missing:
            raise ModelError(f"model {package.name}: model.onnx has no output {missing[0]!r}")
        self._input = package.input.name

    def run(self, batch: np.ndarray) -> Outputs:
        expected = tuple(self.package.input.shape[1:])
        if tuple(batch.shape[1:]) != expected:
            raise ModelError(f"model {self.package.name}: input {batch.shape[1:]} != expected {expected}")
        prob, box = self._session.run(self._outputs, {self._input: batch.astype(np.float32, copy=False)})
        return Outputs(np.asarray(prob, np.float32).reshape(-1), np.asarray(box, np.float32).reshape(-1, 4))

    def close(self) -> None:
        del self._session


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, "onnxruntime is not installed"
        return True, ""

    def load(self, package: ModelPackage, cache_root: Path | None = None) -> OnnxRuntimeEngine:
        return OnnxRuntimeEngine(package)


register(OnnxRuntimeBackend())
