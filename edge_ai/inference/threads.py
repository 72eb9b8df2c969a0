"""CPU threads of the inference worker: numpy's BLAS runs single-threaded, and every thread that infers
(the worker, its imaging threads, ONNX Runtime's own pool) yields the CPU to reception.

The resize step (`imaging.pixels.resize`) is two small matrix products per image. OpenBLAS
splits each over all cores and its threads then wait for work by spinning and yielding; on the
2-core appliance, beside ONNX Runtime's own pool and the node's other threads, a 512 x 512 ->
128 x 128 resize measured 8-10 ms with two BLAS threads and 1.1 ms with one (docs/performance.md).
The products are too small to gain from threads. (The thread count moves the last bit of some
resized pixels, so with one thread the tensors no longer depend on the machine's core count.)

OpenBLAS reads OPENBLAS_NUM_THREADS only when it is loaded, so the limit is set through its
C API on the copy numpy loaded (threadpoolctl does the same; it is not a dependency here). Other
BLAS builds (MKL, Accelerate) are left as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

BACKGROUND_NICE = 10  # the worker's threads under reception's: CFS weight 110 against 1024


def yield_to_reception() -> None:
    """Lower the calling thread's CPU priority (Linux: nice applies per thread), so that inference, which
    runs while series arrive, never takes the CPU from receiving them (ingest 105 -> 44 instances/s on 2
    cores without it). Idle cores still go to inference. Unprivileged: it cannot be raised back."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed: it competes as before
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def made_in_background(make: Callable[[], T]) -> T:
    """`make()` run on a short-lived thread that first yields to reception: threads it starts (ONNX
    Runtime's intra-op pool, made with its session) inherit that priority, as Linux threads inherit
    their creator's nice value. Returns what `make` returns and raises what it raises."""
    box: dict[str, object] = {}

    def run() -> None:
        yield_to_reception()
        try:
            box["made"] = make()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="engine-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["made"]  # type: ignore[return-value]

# set_num_threads entry points of OpenBLAS builds: plain, 64-bit-integer, and numpy's scipy-openblas
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads")


def _loaded_openblas(maps: Path = Path("/proc/self/maps")) -> list[str]:
    try:
        lines = maps.read_text().splitlines()
    except OSError:  # not Linux: nothing to find
        return []
    paths = {line.split()[-1] for line in lines if "openblas" in line.rsplit("/", 1)[-1].lower()}
    return sorted(p for p in paths if ".so" in p)


def limit_blas_threads(threads: int = 1) -> list[str]:
    """Limit every OpenBLAS loaded in this process (numpy's) to `threads`; returns the libraries set."""
    import numpy  # noqa: F401  (the BLAS to limit is the one numpy loads)

    done = []
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter.restype = None
                setter(int(threads))
                done.append(path)
                break
    return done
