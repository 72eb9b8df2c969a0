"""Images through a model in batches, each image's output written to the job store as it is made.

One routine serves both moments a series is inferred: while it arrives (`strict` False: an image that
cannot be read or inferred is recorded with its reason and the rest go on) and when it is complete
(`strict` True: the remaining images, and any that failed before, are inferred now and an error fails
the job, as it always did). Preprocessing runs on IMAGING_THREADS threads at most PREFETCH_BATCHES
batches ahead of the engine, so memory is a few batches whatever the series size; the outputs go to
disk batch by batch, never accumulating here.

Every batch is padded to the model's largest batch size: a runtime's result for one image must not
depend on how many others happened to share its batch (ONNX Runtime picks its kernels by batch
size), or the SR of a series inferred while it arrived could differ from one inferred at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol

import numpy as np

from edge_ai.domain import InferenceResult
from edge_ai.grouping.outputs import Output
from edge_ai.imaging import frames, pixels
from edge_ai.inference.aggregate import ImageInfo, summarize
from edge_ai.inference.engine import Engine, Outputs
from edge_ai.inference.threads import yield_to_reception
from edge_ai.service import reading

IMAGING_THREADS = 2  # preprocessing threads beside the engine; CT 300 in-process 4.0 -> 3.0 ms/slice on 2 cores
PREFETCH_BATCHES = 2  # batches preprocessed ahead of the one the engine runs (1: 3.1, 2: 3.0, 4: 3.1 ms/slice)

Key = tuple[str, str]  # model name, version


def key_of(engine: Engine) -> Key:
    return (engine.package.name, engine.package.version)


class Sink(Protocol):
    """Where outputs go: the job store (`grouping.outputs.OutputStore`), or a list (`infer_sources`)."""

    def put(self, model: Key, outputs: Sequence[Output]) -> None: ...


class Runner:
    """Runs engines over images and records their outputs; `close` stops its imaging threads."""

    def __init__(self, outputs: Sink, on_tensor: Callable[[str, np.ndarray], None]) -> None:
        self.outputs = outputs
        self.on_tensor = on_tensor
        self.pool = ThreadPoolExecutor(IMAGING_THREADS, thread_name_prefix="imaging", initializer=yield_to_reception)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def run(self, engine: Engine, units: Sequence[reading.Unit], *, observe: bool, strict: bool,
            beside: Engine | None = None) -> Exception | None:
        """Infer `units` with `engine` (and `beside`, a shadow taking the same tensors) and record the
        outputs. `observe`: every tensor goes to the drift monitor, once. Returns the shadow's error, if
        any (a shadow never fails the live job).

        Raises:
            ImagingError, ModelError: only when `strict`.
        """
        batch_size = max(engine.package.batch_sizes)
        batches = [list(units[i:i + batch_size]) for i in range(0, len(units), batch_size)]
        left: dict[int, int] = {}  # images of each instance not yet inferred: an instance is recorded once all are
        for unit in units:
            left[unit.source.instance_id] = left.get(unit.source.instance_id, 0) + 1
        done: dict[int, list[Output]] = {}
        shadow_done: dict[int, list[Output]] = {}
        shadow_error: Exception | None = None
        pending: deque[list[Future[np.ndarray]]] = deque()
        spec = engine.package.preprocessing
        for index, batch in enumerate(batches):
            while len(pending) <= PREFETCH_BATCHES and index + len(pending) < len(batches):
                ahead = batches[index + len(pending)]
                # frame headers are made here, on this thread: imaging threads only read them
                pending.append([self.pool.submit(reading.tensor, u, frames.frame_header(u.source.header, u.frame),
                                                 spec) for u in ahead])
            started = time.monotonic()
            good, failed = self._tensors(batch, pending.popleft(), strict)
            if good:
                try:
                    out, shadow, error = self._infer(engine, [t for _, t in good], observe, beside)
                except Exception as exc:
                    if strict:
                        raise
                    failed.update({u.source.instance_id: f"{type(exc).__name__}: {exc}" for u, _ in good})
                    good, out, shadow, error = [], None, None, None
                shadow_error = shadow_error or error
                seconds = (time.monotonic() - started) / max(1, len(good))
                for row, (unit, _) in enumerate(good):
                    assert out is not None
                    done.setdefault(unit.source.instance_id, []).append(_output(unit, out, row, seconds))
                    if shadow is not None:
                        shadow_done.setdefault(unit.source.instance_id, []).append(_output(unit, shadow, row, 0.0))
            self._record(engine, beside, batch, failed, left, done, shadow_done)
        return shadow_error

    def _tensors(self, batch: list[reading.Unit], futures: list[Future[np.ndarray]],
                 strict: bool) -> tuple[list[tuple[reading.Unit, np.ndarray]], dict[int, str]]:
        good, failed = [], {}
        for unit, future in zip(batch, futures, strict=True):
            try:
                good.append((unit, future.result()))
            except Exception as exc:
                if strict:
                    raise
                failed[unit.source.instance_id] = str(exc)
        return [(u, t) for u, t in good if u.source.instance_id not in failed], failed

    def _infer(self, engine: Engine, tensors: list[np.ndarray], observe: bool, beside: Engine | None
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None, Exception | None]:
        if observe:
            for tensor in tensors:
                self.on_tensor(engine.package.name, tensor)
        stacked = pixels.stack(tensors, max(engine.package.batch_sizes))
        out = engine.run(stacked)
        shadow, error = None, None
        if beside is not None:
            try:
                result = beside.run(stacked)
                shadow = (result.probability, result.box)
            except Exception as exc:  # audited by the caller; never the live job's failure
                error = exc
        return (out.probability, out.box), shadow, error

    def _record(self, engine: Engine, beside: Engine | None, batch: list[reading.Unit], failed: dict[int, str],
                left: dict[int, int], done: dict[int, list[Output]], shadow_done: dict[int, list[Output]]) -> None:
        """Write the outputs of every instance whose images are all inferred, and the reasons of those
        that failed (dropping whatever of them was inferred)."""
        finished: list[Output] = []
        shadow: list[Output] = []
        errors = []
        for unit in batch:
            instance = unit.source.instance_id
            if instance not in left:
                continue  # already recorded (failed earlier)
            left[instance] -= 1
            if instance in failed:
                del left[instance]
                done.pop(instance, None)
                shadow_done.pop(instance, None)
                errors.append(Output(instance, -1, None, (0.0, 0, 0), 0, 0, None, None, error=failed[instance]))
            elif left[instance] == 0:
                del left[instance]
                finished.extend(done.pop(instance, []))
                shadow.extend(shadow_done.pop(instance, []))
        self.outputs.put(key_of(engine), finished + errors)
        if beside is not None:
            self.outputs.put(key_of(beside), shadow)


def _output(unit: reading.Unit, out: tuple[np.ndarray, np.ndarray], row: int, seconds: float) -> Output:
    header = unit.source.header
    box = out[1][row]
    return Output(unit.source.instance_id, unit.frame.index, unit.frame.number, unit.frame.key,
                  int(header.Rows), int(header.Columns), float(out[0][row]),
                  (float(box[0]), float(box[1]), float(box[2]), float(box[3])), seconds)


class _Collected:
    def __init__(self) -> None:
        self.rows: list[Output] = []

    def put(self, model: Key, outputs: Sequence[Output]) -> None:
        self.rows.extend(outputs)


def infer_sources(engine: Engine, sources: Sequence[reading.Source]) -> InferenceResult:
    """Every image of `sources` through `engine`, aggregated in slice order, in memory: for tests and
    scripts (the node keeps outputs in the job store, `Pipeline`)."""
    numbered = [replace(s, instance_id=i + 1) for i, s in enumerate(sources)]
    sink = _Collected()
    runner = Runner(sink, lambda model, tensor: None)
    try:
        runner.run(engine, reading.units(numbered), observe=False, strict=True)
    finally:
        runner.close()
    rows = sorted(sink.rows, key=lambda o: (o.key, o.instance_id, o.frame_index))
    sink.rows.clear()
    infos = [ImageInfo(numbered[o.instance_id - 1].ref.sop_instance_uid, numbered[o.instance_id - 1].ref.sop_class_uid,
                       o.rows, o.columns, o.frame_number) for o in rows]
    probability = np.array([o.probability for o in rows], dtype=np.float64)
    box = np.array([o.box for o in rows], dtype=np.float64).reshape(len(rows), 4)
    del rows
    return summarize(engine.package, engine.runtime, infos, Outputs(probability, box))
