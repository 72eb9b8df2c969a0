"""Thin cuda-python layer for the TensorRT backend: device info, streams, device and pinned buffers.

Imports nothing from CUDA at module load, so the rest of edge_ai never needs it. Uses the runtime
API bindings of cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` before cuda-python 12.6).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


def cudart() -> Any:
    """The cuda-python runtime module, or ImportError where cuda-python is absent."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python < 12.6
    return runtime


def check(call: str, result: Any) -> Any:
    """cuda-python returns (error, *values): raise on error, return the value(s)."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(err)
        raise CudaError(f"{call} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"
    total_memory: int


def gpu_info(device: int = 0) -> GpuInfo | None:
    """The GPU's identity for the engine cache key, or None where there is no usable GPU."""
    try:
        rt = cudart()
        count = check("cudaGetDeviceCount", rt.cudaGetDeviceCount())
    except (ImportError, CudaError):
        return None
    if not count:
        return None
    prop = check("cudaGetDeviceProperties", rt.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))


class Stream:
    """A non-default CUDA stream owned by one engine context."""

    def __init__(self) -> None:
        rt = cudart()
        self.handle = check("cudaStreamCreateWithFlags",
                            rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))

    def synchronize(self) -> None:
        check("cudaStreamSynchronize", cudart().cudaStreamSynchronize(self.handle))

    def close(self) -> None:
        if self.handle is not None:
            check("cudaStreamDestroy", cudart().cudaStreamDestroy(self.handle))
            self.handle = None

    @property
    def ptr(self) -> int:
        return int(self.handle)


class DeviceBuffer:
    """Device memory allocated once (cudaMalloc) and reused for every batch."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = int(check("cudaMalloc", cudart().cudaMalloc(max(nbytes, 1))))

    def close(self) -> None:
        if self.ptr:
            check("cudaFree", cudart().cudaFree(self.ptr))
            self.ptr = 0


class PinnedArray:
    """Page-locked host memory seen as a numpy array, so copies to and from the GPU are async."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any] | type) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.ptr = int(check("cudaMallocHost", cudart().cudaMallocHost(max(self.nbytes, 1))))
        raw = memoryview((ctypes.c_byte * self.nbytes).from_address(self.ptr)).cast("B")
        self.array: np.ndarray = np.frombuffer(raw, dtype=self.dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            del self.array
            check("cudaFreeHost", cudart().cudaFreeHost(self.ptr))
            self.ptr = 0


def copy_to_device(dst: DeviceBuffer, src: PinnedArray, nbytes: int, stream: Stream) -> None:
    _copy_async("H2D", dst, src, nbytes, stream)


def copy_to_host(dst: PinnedArray, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    _copy_async("D2H", dst, src, nbytes, stream)


def _copy_async(direction: str, dst: DeviceBuffer | PinnedArray, src: DeviceBuffer | PinnedArray,
                nbytes: int, stream: Stream) -> None:
    """cudaMemcpyAsync on `stream`, refused before reaching CUDA if it would overrun a buffer."""
    if nbytes > min(dst.nbytes, src.nbytes):
        raise ValueError(f"copy of {nbytes} bytes exceeds a buffer")
    rt = cudart()
    kinds = {"H2D": rt.cudaMemcpyKind.cudaMemcpyHostToDevice, "D2H": rt.cudaMemcpyKind.cudaMemcpyDeviceToHost}
    check(f"cudaMemcpyAsync({direction})",
          rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kinds[direction], stream.handle))
