"""CPU threads of the inference worker: numpy's BLAS runs single-threaded.

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

import ctypes
from pathlib import Path

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
