"""Audit trail figures: record() latency with and without seals, verify time full vs fast on a long
log, and C-STORE time with ATNA on vs off (a real node, DCMTK storescu, rsyslog over TLS).

    .venv/bin/python scripts/audit_bench.py [--lines 300000] [--instances 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from atna_peer import Rsyslog
from peers import NodeProcess, make_pki, storescu, wait_for

from edge_ai import phantoms
from edge_ai.observability.audit import AuditLog
from edge_ai.observability.audit_seals import SealStore
from edge_ai.observability.audit_verify import verify

KEY = b"b" * 32


def record_latency(folder: Path, key: bytes | None, n: int = 20000) -> tuple[float, float]:
    store = SealStore(folder / "seals.sqlite3") if key else None
    log = AuditLog(folder / "audit.jsonl", 0.02, key=key, seals=store)
    times = []
    for i in range(n):
        t = time.perf_counter()
        log.record("instance.stored", sop_instance_uid=f"1.2.3.{i}", study_uid="1.2.3", bytes=i, sha256="0" * 64)
        times.append(time.perf_counter() - t)
    log.close()
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.999)] * 1e6


def verify_times(folder: Path, lines: int) -> None:
    store = SealStore(folder / "seals.sqlite3")
    log = AuditLog(folder / "audit.jsonl", 0.02, key=KEY, seals=store, segment_bytes=16 * 1024**2)
    for i in range(lines):
        log.record("instance.stored", sop_instance_uid=f"1.2.826.0.1.3680043.10.{i}", study_uid="1.2.826.0.1.3",
                   series_uid="1.2.826.0.1.3.1", bytes=500000 + i, sha256="0" * 64, calling_ae="CT_SCANNER_1",
                   called_ae="EDGE_AI", peer="10.1.2.3:40000")
    log.maintain()
    log.close()
    size = sum(p.stat().st_size for p in folder.glob("audit*"))
    for fast in (False, True):
        t = time.perf_counter()
        result = verify(folder / "audit.jsonl", KEY, store, fast=fast)
        took = time.perf_counter() - t
        print(f"verify {'fast' if fast else 'full'}: {result.lines} lines re-hashed, {result.seals} seals, "
              f"{took:.2f} s ({'ok' if result.ok else result.reason}); log {lines} lines, {size / 1e6:.1f} MB on disk")


def cstore_time(folder: Path, instances: int, atna: bool) -> float:
    datasets, _ = phantoms.ct_case(np.random.default_rng(3), slices=instances, size=256, lesion=True)
    files = []
    (folder / "ct").mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        files.append(folder / "ct" / f"{i:03d}.dcm")
        phantoms.write_dataset(ds, files[-1])
    arr = None
    extra: dict[str, object] = {}
    if atna:
        pki = make_pki(folder / "pki")
        arr = Rsyslog(folder / "arr", pki).start()
        extra = {"audit": {"atna": {"host": "127.0.0.1", "port": arr.port, "tls": {"ca_certificates": str(pki["ca"])}}}}
    node = NodeProcess(folder / "node", extra=extra).start()
    try:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            assert storescu(node.port, files).returncode == 0
            best = min(best, time.perf_counter() - t)
        if arr is not None:
            wait_for(lambda: len(arr.frames()) >= 3 * instances, 60)
        return best / instances * 1000
    finally:
        node.stop()
        if arr is not None:
            arr.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=300000)
    p.add_argument("--instances", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2, help="C-STORE runs, alternating ATNA off and on")
    p.add_argument("--skip-verify", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, key in (("no seals", None), ("sealed every 100", KEY)):
            (root / name).mkdir()
            p50, p999 = record_latency(root / name, key)
            print(f"record() {name}: p50 {p50:.0f} us, p99.9 {p999:.0f} us")
        if not args.skip_verify:
            (root / "long").mkdir()
            verify_times(root / "long", args.lines)
        offs, ons = [], []
        for r in range(args.rounds):
            offs.append(cstore_time(root / f"off{r}", args.instances, atna=False))
            ons.append(cstore_time(root / f"on{r}", args.instances, atna=True))
        off, on = statistics.median(offs), statistics.median(ons)
        print(f"C-STORE per instance (storescu, one association, best of 3 per round, median of {args.rounds} "
              f"rounds): ATNA off {off:.1f} ms {[round(x, 1) for x in offs]}, on {on:.1f} ms "
              f"{[round(x, 1) for x in ons]} (ratio {on / off:.2f})")


if __name__ == "__main__":
    main()
