#!/usr/bin/env python3
"""Enhanced CT analysed frame by frame: time and memory for --frames x 512 x 512 16-bit instances.

For each frame count, in a fresh process each (so peaks are that run's own):
  node     the worker's path (headers, frame layout, one frame decoded at a time, demo-ct-lesion on
           ONNX Runtime CPU): seconds, ms/frame, peak RSS growth over the process before the job,
           tracemalloc peak of the imaging + inference step;
  whole    baseline: pydicom decodes the instance whole (`pixels.preprocess_frames`, what analysing a
           multi-frame instance as one array costs), same model: seconds and peak RSS growth.

Usage: python scripts/bench_multiframe.py [--frames 400 1000] [--baseline/--no-baseline]
Writes the instances under a temporary folder (~0.5 GB per 1000 frames). Prints a table; exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CT_PACKAGE = ROOT / "edge_ai" / "models" / "demo_ct"

_CHILD = r"""
import json, sys, time, tracemalloc
from pathlib import Path

import numpy as np, pydicom
from edge_ai.domain import InstanceRef
from edge_ai.imaging import pixels
from edge_ai.inference.aggregate import ImageInfo, summarize
from edge_ai.inference.engine import Outputs
from edge_ai.inference.onnxruntime import OnnxRuntimeEngine
from edge_ai.inference.package import load_package
from edge_ai.inference.threads import limit_blas_threads
from edge_ai.report.sr import warm_up
from edge_ai.service import reading
from edge_ai.service.inferring import infer_sources

def hwm_rss():
    fields = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024

mode, path, package = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
engine = OnnxRuntimeEngine(load_package(package))
header = pydicom.dcmread(path, stop_before_pixels=True)
ref = InstanceRef(str(header.SOPClassUID), str(header.SOPInstanceUID), "", "", str(path), "", 0)
engine.run(np.zeros((16, 1, 128, 128), np.float32))
limit_blas_threads(1)  # the worker as the node sets it up (BLAS threads, highdicom tables loaded)
warm_up()
Path("/proc/self/clear_refs").write_text("5")
base = hwm_rss()[1]
started = time.monotonic()
tracemalloc.start()
if mode == "node":
    header, offset = reading.read_header(ref)
    result = infer_sources(engine, [reading.Source(ref, header, offset)])
    images = len(result.scores)
else:
    ds = pydicom.dcmread(path)
    batch = pixels.preprocess_frames(ds, engine.package.preprocessing)
    probs, boxes = [], []
    for start in range(0, len(batch), 16):
        out = engine.run(batch[start:start + 16])
        probs.append(out.probability); boxes.append(out.box)
    infos = [ImageInfo("x", "y", int(ds.Rows), int(ds.Columns), k + 1) for k in range(len(batch))]
    result = summarize(engine.package, "cpu", infos, Outputs(np.concatenate(probs), np.concatenate(boxes)))
    images = len(batch)
traced = tracemalloc.get_traced_memory()[1]
seconds = time.monotonic() - started
print(json.dumps({"seconds": seconds, "images": images, "peak_mb": hwm_rss()[0] - base,
                  "traced_mb": traced / 2**20, "positive": result.positive}))
"""


def _make(path: Path, frames: int) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from edge_ai import phantoms

    volume, _ = phantoms.ct_volume(np.random.default_rng(frames), slices=40, size=512, lesion=True, lesion_at=30)
    ds = phantoms.enhanced_ct_dataset(None, shape=(frames, 512, 512))
    phantoms.write_multiframe(ds, (volume[k * 40 // frames] for k in range(frames)), path)


def _run(mode: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path), str(CT_PACKAGE)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[400, 1000])
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    print(f"{'frames':>6} {'decoded MB':>10} {'mode':>6} {'s':>7} {'ms/frame':>8} {'peak RSS +MB':>12} "
          f"{'traced MB':>9} positive")
    with tempfile.TemporaryDirectory() as tmp:
        for frames in args.frames:
            path = Path(tmp) / f"{frames}.dcm"
            _make(path, frames)
            for mode in ("node", "whole") if args.baseline else ("node",):
                r = _run(mode, path)
                print(f"{frames:>6} {frames * 512 * 512 * 2 / 1e6:>10.0f} {mode:>6} {r['seconds']:>7.1f} "
                      f"{1000 * r['seconds'] / r['images']:>8.2f} {r['peak_mb']:>12.0f} {r['traced_mb']:>9.1f} "
                      f"{r['positive']}")
            path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
