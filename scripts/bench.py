#!/usr/bin/env python3
"""edge_ai benchmark: DX time-to-result beside DCMTK, measured in the same run.

Time-to-result = storescu start -> the SR is stored in Orthanc (polled over its REST API).
Baseline       = storescu start -> storescu exit, sending the same file to DCMTK storescp.

Usage: python scripts/bench.py [--sends 20] [--dx-size 2048]
Prints a table; exits 0. Needs DCMTK and Orthanc (make system-deps).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from peers import DCMTK, PEER_ENV, NodeProcess, Orthanc, free_port, storescu, wait_port  # noqa: E402

from edge_ai import phantoms  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def dx_files(folder: Path, sends: int, size: int) -> list[Path]:
    """One phantom, re-identified per send (new study/series/instance UIDs) so each send is new work."""
    ds, _ = phantoms.dx_case(np.random.default_rng(1), size=size, lesion=True)
    paths = []
    for i in range(sends):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / f"dx{i:03d}.dcm")
        phantoms.write_dataset(ds, paths[-1])
    return paths


def bench_storescp(files: list[Path], workdir: Path) -> list[float]:
    port = free_port()
    out = workdir / "storescp"
    out.mkdir()
    scp = subprocess.Popen([str(DCMTK / "storescp"), "-od", str(out), "-aet", "EDGE_AI", str(port)],
                           env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        times = []
        for f in files:
            start = time.perf_counter()
            storescu(port, [f])
            times.append(time.perf_counter() - start)
        return times
    finally:
        scp.terminate()
        scp.wait()


def bench_node(files: list[Path], workdir: Path) -> list[float]:
    pacs = Orthanc(workdir / "orthanc").start()
    node = NodeProcess(workdir / "node", destinations=[pacs.destination()]).start()
    try:
        times = []
        for f in files:
            before = pacs.get("/statistics")["CountInstances"]
            start = time.perf_counter()
            out = storescu(node.port, [f])
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            deadline = start + 30
            while pacs.get("/statistics")["CountInstances"] <= before:
                if time.perf_counter() > deadline:
                    raise RuntimeError("no SR in Orthanc within 30 s\n" + node.log())
                time.sleep(0.005)
            times.append(time.perf_counter() - start)
        return times
    finally:
        node.stop()
        pacs.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=20)
    parser.add_argument("--dx-size", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-ai-bench-") as tmp:
        work = Path(tmp)
        files = dx_files(work, args.sends, args.dx_size)
        size_mb = files[0].stat().st_size / 1e6
        baseline = bench_storescp(files, work)
        node = bench_node(files, work)
    rows = [
        ("DCMTK storescu -> storescp (stored)", baseline),
        ("edge_ai storescu -> SR in Orthanc", node),
    ]
    print(f"\nDX {args.dx_size}x{args.dx_size} ({size_mb:.1f} MB), {args.sends} sends, loopback, TCP_NODELAY=1 for DCMTK")
    print(f"{'path':40s} {'p50 s':>8s} {'p99 s':>8s} {'max s':>8s}")
    for name, values in rows:
        print(f"{name:40s} {percentile(values, 50):8.3f} {percentile(values, 99):8.3f} {max(values):8.3f}")
    ratio = percentile(node, 50) / percentile(baseline, 50)
    print(f"ratio p50 time-to-result / storescp store: {ratio:.1f}x   target: edge_ai p50 <= 0.5 s "
          f"({'met' if percentile(node, 50) <= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
