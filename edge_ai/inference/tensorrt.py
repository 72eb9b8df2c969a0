"""TensorRT backend (TensorRT 10+ Python API, cuda-python for memory and streams).

Kept thin: parse the package's ONNX, build (FP16 where the GPU has fast FP16) with one optimisation
profile spanning the package's batch sizes, cache the plan keyed by everything that makes a plan
valid, and run with named tensors and `execute_async_v3` on the engine's own stream. Device and
pinned host buffers are allocated once for the largest batch; each worker thread gets its own
execution context. Everything that needs no TensorRT (keys, cache, profiles) is plain Python.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_ai.errors import ModelError
from edge_ai.inference import cuda
from edge_ai.inference.engine import Outputs, register
from edge_ai.inference.package import ModelPackage
from edge_ai.spool.store import write_durably

WORKSPACE_BYTES = 1 << 30


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized plan depends on; any difference means rebuild, never load."""

    model_sha256: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    precision: str  # "fp16" or "fp32"
    batch_sizes: tuple[int, ...]

    @property
    def filename(self) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower()[:40] or "gpu"
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        return (f"{self.model_sha256[:16]}-{gpu}-sm{self.compute_capability.replace('.', '')}"
                f"-trt{self.tensorrt_version}-{self.precision}-{digest}.plan")


class EngineCache:
    """Plans under `root` with a JSON sidecar naming their key and the plan's own sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        plan = self.root / key.filename
        return plan, plan.with_suffix(".json")

    def load(self, key: EngineKey) -> bytes | None:
        """The cached plan for exactly this key, or None (missing, stale, or corrupt: rebuild)."""
        plan_path, meta_path = self.paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            plan = plan_path.read_bytes()
        except (OSError, ValueError):
            return None
        recorded = meta.get("key", {})
        recorded["batch_sizes"] = tuple(recorded.get("batch_sizes", ()))
        if recorded != asdict(key) | {"batch_sizes": key.batch_sizes}:
            return None
        if hashlib.sha256(plan).hexdigest() != meta.get("plan_sha256"):
            return None
        return plan

    def store(self, key: EngineKey, plan: bytes) -> Path:
        plan_path, meta_path = self.paths(key)
        write_durably(plan_path, plan)
        meta = {"key": {**asdict(key), "batch_sizes": list(key.batch_sizes)},
                "plan_sha256": hashlib.sha256(plan).hexdigest()}
        write_durably(meta_path, json.dumps(meta, indent=1).encode())
        return plan_path


def profile_shapes(package: ModelPackage) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes: batch from the package's smallest to largest declared size."""
    sizes = sorted(set(package.batch_sizes))
    if sizes[0] < 1:
        raise ModelError(f"model {package.name}: batch sizes must be >= 1")
    rest = tuple(package.input.shape[1:])
    if any(d < 1 for d in rest):
        raise ModelError(f"model {package.name}: only the batch axis may be dynamic, got {package.input.shape}")
    return (sizes[0], *rest), (sizes[-1], *rest), (sizes[-1], *rest)


def check_batch(package: ModelPackage, batch: np.ndarray) -> None:
    """A batch must have the package's input layout and fit the built profile."""
    _, _, biggest = profile_shapes(package)
    if tuple(batch.shape[1:]) != biggest[1:]:
        raise ModelError(f"model {package.name}: input {tuple(batch.shape[1:])} != expected {biggest[1:]}")
    if not 1 <= batch.shape[0] <= biggest[0]:
        raise ModelError(f"model {package.name}: batch of {batch.shape[0]} outside 1..{biggest[0]}")


def _trt() -> Any:
    import tensorrt

    return tensorrt


class TensorRTEngine:
    """One deserialized engine; execution contexts and buffers per thread, created on first use."""

    def __init__(self, package: ModelPackage, plan: bytes, precision: str) -> None:
        trt = _trt()
        self.package = package
        self.runtime = f"tensorrt-{precision}"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ModelError(f"model {package.name}: TensorRT could not deserialize the cached plan")
        self._input = package.input.name
        self._outputs: dict[str, str] = {k: v.name for k, v in package.outputs.items()}
        self._local = threading.local()
        self._all: list[_Context] = []
        self._lock = threading.Lock()

    def _context(self) -> _Context:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = _Context(self._engine, self.package, self._input, self._outputs)
            self._local.ctx = ctx
            with self._lock:
                self._all.append(ctx)
        return ctx

    def run(self, batch: np.ndarray) -> Outputs:
        check_batch(self.package, batch)
        return self._context().run(batch)

    def close(self) -> None:
        with self._lock:
            for ctx in self._all:
                ctx.close()
            self._all.clear()


class _Context:
    """An execution context with its stream and buffers, allocated once for the largest batch."""

    def __init__(self, engine: Any, package: ModelPackage, input_name: str, outputs: dict[str, str]) -> None:
        self.context = engine.create_execution_context()
        self.stream = cuda.Stream()
        _, _, biggest = profile_shapes(package)
        self.max_batch = biggest[0]
        self.input_name = input_name
        self.outputs = outputs
        shapes = {input_name: biggest, outputs["probability"]: (self.max_batch,),
                  outputs["box"]: (self.max_batch, 4)}
        self.host = {name: cuda.PinnedArray(shape, np.float32) for name, shape in shapes.items()}
        self.device = {name: cuda.DeviceBuffer(self.host[name].nbytes) for name in shapes}
        for name, buf in self.device.items():
            self.context.set_tensor_address(name, buf.ptr)

    def run(self, batch: np.ndarray) -> Outputs:
        n = batch.shape[0]
        host_in = self.host[self.input_name]
        host_in.array[:n] = batch
        self.context.set_input_shape(self.input_name, tuple(batch.shape))
        cuda.copy_to_device(self.device[self.input_name], host_in, batch.nbytes, self.stream)
        if not self.context.execute_async_v3(self.stream.ptr):
            raise ModelError("TensorRT execute_async_v3 failed")
        prob_name, box_name = self.outputs["probability"], self.outputs["box"]
        cuda.copy_to_host(self.host[prob_name], self.device[prob_name], n * 4, self.stream)
        cuda.copy_to_host(self.host[box_name], self.device[box_name], n * 16, self.stream)
        self.stream.synchronize()
        return Outputs(self.host[prob_name].array[:n].copy(), self.host[box_name].array[:n].copy())

    def close(self) -> None:
        for buf in self.device.values():
            buf.close()
        for arr in self.host.values():
            arr.close()
        self.stream.close()


def build_plan(package: ModelPackage, fp16: bool) -> bytes:
    """Parse model.onnx and build a serialized plan with one profile over the batch sizes."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(package.onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"model {package.name}: TensorRT cannot parse model.onnx: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    lo, opt, hi = profile_shapes(package)
    profile.set_shape(package.input.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"model {package.name}: TensorRT engine build failed")
    return bytes(plan)


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, cache_root: Path | None = None) -> None:
        self.cache_root = cache_root

    def available(self) -> tuple[bool, str]:
        try:
            trt = _trt()
        except ImportError:
            return False, "TensorRT is not installed"
        try:
            cuda.cudart()
        except ImportError:
            return False, "cuda-python is not installed"
        if cuda.gpu_info() is None:
            return False, "no NVIDIA GPU is visible"
        major = int(str(trt.__version__).split(".")[0])
        if major < 10:
            return False, f"TensorRT {trt.__version__} is older than 10"
        return True, ""

    def key(self, package: ModelPackage) -> EngineKey:
        gpu = cuda.gpu_info()
        if gpu is None:
            raise ModelError("no NVIDIA GPU is visible")
        trt = _trt()
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        precision = "fp16" if builder.platform_has_fast_fp16 else "fp32"
        return EngineKey(package.sha256, gpu.name, gpu.compute_capability, str(trt.__version__), precision,
                         tuple(sorted(set(package.batch_sizes))))

    def build(self, package: ModelPackage, cache_root: Path) -> tuple[EngineKey, Path, bool]:
        """Build (or find) the plan for this GPU; returns (key, path, built_now)."""
        key = self.key(package)
        cache = EngineCache(cache_root)
        if cache.load(key) is not None:
            return key, cache.paths(key)[0], False
        plan = build_plan(package, fp16=key.precision == "fp16")
        return key, cache.store(key, plan), True

    def load(self, package: ModelPackage, cache_root: Path | None = None) -> TensorRTEngine:
        root = cache_root or self.cache_root
        if root is None:
            raise ModelError("TensorRT needs an engine cache folder (storage.root/engines)")
        key, path, _ = self.build(package, root)
        plan = EngineCache(root).load(key)
        if plan is None:
            raise ModelError(f"model {package.name}: engine plan at {path} did not verify after build")
        return TensorRTEngine(package, plan, key.precision)


register(TensorRTBackend())
