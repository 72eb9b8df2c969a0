"""The node's allocator: image-sized buffers go back to the system when they are freed.

glibc's malloc serves a request of at least M_MMAP_THRESHOLD bytes with a mapping of its own, which
free() unmaps. By default the threshold moves: each such block freed raises it to that block's size
(up to 32 MiB), so after the first CT slice every slice-sized buffer (decoded pixels, float images,
PDU reassembly) comes from the heap instead, and a small allocation made meanwhile that outlives it
pins the heap's memory below it. RSS then grows with the number of images handled and is not
given back: measured 1.97 KiB per instance between a 500- and a 3,000-slice series, against 0.4
KiB with the threshold held (docs/performance.md).

Setting the threshold (mallopt, as the MALLOC_MMAP_THRESHOLD_ environment variable would) holds it
there: blocks of 256 KiB and more are always mapped and always returned. Smaller allocations (model
tensors of 128 x 128 floats, headers) stay on the heap, where reuse is cheap.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
IMAGE_BLOCK_BYTES = 256 * 1024


def return_large_blocks(threshold: int = IMAGE_BLOCK_BYTES) -> bool:
    """Hold glibc's mmap threshold at `threshold` bytes for this process; call it before threads start.
    False where the C library is not glibc (musl, macOS: their allocators differ) or an environment
    variable already set it (the operator's choice wins)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # no mallopt: not glibc's allocator
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
