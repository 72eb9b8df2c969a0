#!/usr/bin/env python3
"""GPU check for the TensorRT backend's cuda-python code, for a machine with an NVIDIA GPU.

TensorRT itself cannot be installed on the machines this project is developed on, so this script
exercises everything around it on a real GPU: device identification (the engine cache key),
pinned and device buffers, async copies on a non-default stream, and the backend's per-thread
execution contexts, with TensorRT's execution context replaced by a CuPy stand-in that computes
the toy model on the device buffers' addresses on the given stream. Its outputs must pass the
package self-test (golden outputs from ONNX Runtime). Prints a table; exits 1 on any mismatch.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from toy_models import make_package  # noqa: E402

from edge_ai.inference import cuda  # noqa: E402
from edge_ai.inference.engine import self_test  # noqa: E402
from edge_ai.inference.package import load_package  # noqa: E402
from edge_ai.inference.tensorrt import TensorRTEngine  # noqa: E402


class CupyContext:
    """Stands in for trt.IExecutionContext: named tensor addresses, input shape, execute_async_v3."""

    def __init__(self) -> None:
        self.addresses: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = shape
        return True

    def execute_async_v3(self, stream_ptr: int) -> bool:
        import cupy as cp

        def view(name: str, shape: tuple[int, ...]) -> Any:
            nbytes = int(np.prod(shape)) * 4
            mem = cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(self.addresses[name], nbytes, self), 0)
            return cp.ndarray(shape, cp.float32, mem)

        shape = self.shapes["image"]
        n = shape[0]
        with cp.cuda.ExternalStream(stream_ptr):
            image = view("image", shape)
            mean = image.reshape(n, -1).mean(axis=1)
            view("probability", (n,))[...] = 1 / (1 + cp.exp(-mean))
            view("box", (n, 4))[...] = cp.asarray([0.25, 0.25, 0.5, 0.5], cp.float32)
        return True


class CupyEngine:
    def create_execution_context(self) -> CupyContext:
        return CupyContext()


def engine_with_fake_context(pkg: Any) -> TensorRTEngine:
    eng = TensorRTEngine.__new__(TensorRTEngine)
    eng.package, eng.runtime = pkg, "tensorrt-fp32(cupy stand-in)"
    eng._engine, eng._input = CupyEngine(), pkg.input.name
    eng._outputs = {k: v.name for k, v in pkg.outputs.items()}
    eng._local, eng._all, eng._lock = threading.local(), [], threading.Lock()
    return eng


def main() -> int:
    rows: list[tuple[str, str]] = []
    failures = 0
    info = cuda.gpu_info()
    if info is None:
        print("no GPU visible to cuda-python")
        return 1
    rows.append(("gpu", f"{info.name}, compute capability {info.compute_capability}, "
                        f"{info.total_memory / 2**30:.0f} GiB"))

    stream = cuda.Stream()
    x = np.random.default_rng(0).normal(size=(16, 1, 256, 256)).astype(np.float32)
    host_in, host_out = cuda.PinnedArray(x.shape, np.float32), cuda.PinnedArray(x.shape, np.float32)
    dev = cuda.DeviceBuffer(x.nbytes)
    host_in.array[...] = x
    t0 = time.perf_counter()
    for _ in range(50):
        cuda.copy_to_device(dev, host_in, x.nbytes, stream)
        cuda.copy_to_host(host_out, dev, x.nbytes, stream)
    stream.synchronize()
    secs = time.perf_counter() - t0
    same = bool(np.array_equal(host_out.array, x))
    failures += not same
    rows.append(("pinned H2D+D2H round trip", f"{'identical' if same else 'MISMATCH'}; "
                                              f"{2 * 50 * x.nbytes / secs / 1e9:.1f} GB/s"))
    try:
        cuda.copy_to_device(dev, host_in, x.nbytes + 4, stream)
        failures += 1
        rows.append(("oversized copy", "NOT refused"))
    except ValueError:
        rows.append(("oversized copy", "refused before reaching CUDA"))
    for b in (dev, host_in, host_out):
        b.close()
    stream.close()

    with tempfile.TemporaryDirectory() as tmp:
        pkg = load_package(make_package(Path(tmp) / "toy", size=128, batch_sizes=(1, 8, 16)))
        engine = engine_with_fake_context(pkg)
        ok, detail = self_test(engine)
        failures += not ok
        rows.append(("self-test via backend buffers/stream", f"{'pass' if ok else 'FAIL'} ({detail})"))
        results: dict[int, bool] = {}

        def worker(i: int) -> None:
            batch = np.random.default_rng(i).normal(size=(16, 1, 128, 128)).astype(np.float32)
            out = engine.run(batch)
            want = 1 / (1 + np.exp(-batch.reshape(16, -1).mean(axis=1)))
            results[i] = bool(np.allclose(out.probability, want, atol=1e-5))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failures += not all(results.values())
        rows.append(("4 threads, own context+stream each", f"{sum(results.values())}/4 correct, "
                                                           f"{len(engine._all)} contexts"))
        batch = np.zeros((16, 1, 128, 128), np.float32)
        engine.run(batch)
        t0 = time.perf_counter()
        for _ in range(200):
            engine.run(batch)
        rows.append(("batch 16x128x128 copy+compute+copy", f"{(time.perf_counter() - t0) / 200 * 1e3:.3f} ms"))
        engine.close()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:{width}s}  {v}")
    print("RESULT", "PASS" if failures == 0 else f"FAIL ({failures})")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
