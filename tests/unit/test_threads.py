"""The inference worker's BLAS thread limit (edge_ai.inference.threads): resize stays fast on few cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_ai.imaging import pixels
from edge_ai.inference.threads import BACKGROUND_NICE, _loaded_openblas, limit_blas_threads, made_in_background


def test_finds_openblas_libraries_in_the_memory_map(tmp_path: Path) -> None:
    """Only OpenBLAS shared objects are picked from /proc/self/maps, each once."""
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 0 08:01 1 /usr/lib/libscipy_openblas64_-abc.so\n"
        "7f01-7f02 r--p 0 08:01 1 /usr/lib/libscipy_openblas64_-abc.so\n"
        "7f02-7f03 r-xp 0 08:01 2 /usr/lib/libm.so.6\n"
        "7f03-7f04 rw-p 0 00:00 0\n"
    )
    assert _loaded_openblas(maps) == ["/usr/lib/libscipy_openblas64_-abc.so"]
    assert _loaded_openblas(tmp_path / "absent") == []


def test_resize_is_unchanged_in_value_with_one_blas_thread() -> None:
    """Limiting BLAS threads keeps the resized image (to float32 rounding) and is safe to repeat."""
    img = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    before = pixels.resize(img, (128, 128))
    limit_blas_threads(1)
    limit_blas_threads(1)
    np.testing.assert_allclose(pixels.resize(img, (128, 128)), before, rtol=0, atol=1e-6)


_COUNT_ENGINE_THREADS = """
import json, sys, threading
from pathlib import Path
import onnxruntime  # importing it starts a thread of its own, idle: not counted
from edge_ai.inference.onnxruntime import OnnxRuntimeEngine
from edge_ai.inference.package import load_package

def nice():
    out = {}
    for task in Path("/proc/self/task").iterdir():
        out[task.name] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
    return out

package = load_package(Path(sys.argv[1]))
before = set(nice())
engine = OnnxRuntimeEngine(package)
after = nice()
caller = after[str(threading.get_native_id())]
print(json.dumps({"started": [v for k, v in after.items() if k not in before], "caller": caller,
                  "process": __import__("os").getpriority(__import__("os").PRIO_PROCESS, 0)}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread nice values are Linux's")
def test_onnx_runtime_threads_yield_to_reception() -> None:
    """The threads ONNX Runtime starts for a model run at the worker's lower priority, so inference on
    an idle core is as fast as before but never takes the CPU from receiving a series. (In a process of
    its own: no other test's threads start meanwhile.)"""
    package = Path(__file__).parents[2] / "edge_ai" / "models" / "demo_ct"
    out = subprocess.run([sys.executable, "-c", _COUNT_ENGINE_THREADS, str(package)], capture_output=True,
                         text=True, timeout=120, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    if seen["process"] != 0:
        pytest.skip(f"the tests run at nice {seen['process']}: the worker's priority is relative to 0")
    assert seen["started"], "ONNX Runtime started no thread of its own"
    assert set(seen["started"]) == {BACKGROUND_NICE}
    assert seen["caller"] == 0  # the thread that loads a model keeps its own priority


def test_made_in_background_hands_back_the_result_and_the_error() -> None:
    """What the background thread made, or the error it raised, reaches the caller."""
    assert made_in_background(lambda: 42) == 42
    with pytest.raises(ValueError, match="bad model"):
        made_in_background(lambda: (_ for _ in ()).throw(ValueError("bad model")))
