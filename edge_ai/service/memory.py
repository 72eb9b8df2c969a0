"""The node's allocator: one malloc arena for the whole process, so memory a thread frees is memory the
next thread reuses; and the heap's free pages handed back once a minute (`return_free_memory`).

glibc's malloc gives threads arenas of their own, up to eight per core, so that threads allocating at
the same moment do not wait on one lock. The node's threads come and go (one per association, per HTTP
request, the imaging pool) and each arena keeps what its threads freed, for threads that happen to
use that arena later: RSS grew with the number of images handled. Measured between a 500- and a
3,000-slice series (peak RSS over idle sampled every 20 ms, consecutive runs differing only in this
setting): 2.95 KiB per instance with glibc's default, 1.88 with one arena; `bench stream` read 2.28
KiB both before and after, within its run-to-run noise. DX 2048 inference unchanged (0.043 -> 0.042
s). The node's Python threads allocate under the GIL anyway, so the arena lock costs nothing
measurable here.

(A fixed mmap threshold, which returns every large block, was tried too: 0.4-1.1 KiB per instance,
but a DX image's buffers, 8-16 MB each, were then mapped afresh per image and its inference went from
0.045 to 0.085 s.)
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
from typing import Any

M_ARENA_MAX = -8  # glibc's malloc.h
TRIM_INTERVAL_S = 60.0  # how often the node hands freed heap pages back (App.run's loop)


@functools.cache
def _libc(name: str) -> Any:
    """A function of the C library the interpreter runs on; None where it has none by that name (not
    glibc's allocator; TypeError: Windows). Kept: a ctypes library object is a reference cycle, and the
    node asks for malloc_trim once a minute."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):
        return None


def one_arena() -> bool:
    """Limit glibc's malloc to one arena for this process; call it before threads start. False where
    the C library has no mallopt (not glibc) or the operator set the arena count (MALLOC_ARENA_MAX or
    GLIBC_TUNABLES' glibc.malloc.arena_max: their choice wins)."""
    if "MALLOC_ARENA_MAX" in os.environ or "glibc.malloc.arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 1))


def return_free_memory() -> bool:
    """Hand the pages of every free block in the heap back to the system (glibc's malloc_trim(0)), not
    only those at its top.

    Under a steady load the memory in use levels off (the soak: malloc's in-use bytes 60-64 MB from the
    12th minute on, no trend) while the heap keeps growing a few MB at a time: each new peak of image
    buffers alive at once extends it, and small blocks left above the freed buffers keep it from
    shrinking back, so its free space (18 -> 24 MB over 30 minutes) stays resident. Trimming returns
    those free pages; they come back, zeroed, when next used. Soaks side by side: RSS at the end 3.8 MB
    lower with a trim a minute (35 min, two nodes), 5.2 lower (and 7.0 with a trim every 10 s) in a
    second run of three nodes; the growth after warm-up stays within run-to-run noise (8.1 against 21.6
    MB/hour in the first run, 11.6 against 8.8 in the second). Takes a few ms per 100 MB of free heap,
    under the allocator's lock: the node calls it once a minute.
    False where there is no malloc_trim (not glibc)."""
    trim = _libc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def freeze_startup_objects() -> int:
    """Move every object alive once the node has started (models, highdicom's tables, the config: ~380,000
    objects, nearly all kept for the process's life) out of the garbage collector's reach (gc.freeze);
    returns how many. The collector then scans only what the node made since, and its full collections,
    which CPython starts when the objects that survived earlier collections have grown by a quarter,
    count a quarter of those instead of a quarter of everything: they come far more often than every
    ~10 minutes, so the reference cycles jobs leave behind (pydicom elements, SQLite connections with
    their statement caches) are freed before many accumulate. Left for ~10 minutes, they filled new
    pymalloc arenas that the objects surviving beside them kept resident after the collection: RSS rose
    with each collection (soak, sixth round)."""
    gc.collect()
    return _freeze()


def _freeze() -> int:
    gc.freeze()
    # a full collection now, with everything frozen, makes the count CPython compares against ~0 (freeze
    # alone leaves it at the last full collection's ~380,000 survivors: none would come for hours)
    gc.collect()
    return gc.get_freeze_count()


def refreeze_after_reload() -> tuple[int, int]:
    """After a reload (SIGHUP) has replaced the models, called once nothing holds the old ones (the worker
    between jobs): thaw everything frozen at start, so that the replaced models' objects that sit in
    reference cycles are collected with the rest of what is no longer reachable, then freeze what is alive
    now (the new models among it). Returns (objects frozen now, unreachable objects found). Two full
    collections over the node's ~400,000 objects: a few hundred ms holding the GIL, once per reload;
    what reception holds at that moment stays frozen until the next reload."""
    gc.unfreeze()
    unreachable = gc.collect()
    return _freeze(), unreachable
