"""What the garbage collector would have to free among objects of given modules: for tests that a piece of
work the node repeats all its life (a header per image, a snapshot every 5 s) leaves no reference cycles.
Only the named modules' objects count, so garbage another thread of the test process makes does not."""

from __future__ import annotations

import gc
from collections.abc import Callable


def _module(obj: object) -> str:
    if callable(obj) and hasattr(obj, "__module__") and isinstance(obj.__module__, str):
        return obj.__module__  # a function: where it was defined
    return type(obj).__module__


def cyclic_garbage(work: Callable[[], None], *modules: str) -> list[str]:
    """Run `work` with the collector off, then collect: the unreachable objects (reference cycles, and
    what only they held) whose module starts with one of `modules`, as 'module.type' names."""
    gc.collect()
    gc.disable()
    try:
        work()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found = [f"{_module(o)}.{type(o).__qualname__}" for o in gc.garbage if _module(o).startswith(modules)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    finally:
        gc.enable()
    return found
