"""bench.py `soak`: one node under a steady hospital-like load, watched for slow growth.

Every 1.5 s five DX (each its own study and series) and one 30-slice CT, all new UIDs, each series on
its own association from a caller declared `sends: series`; every SR goes to Orthanc. Every 10 s the
node's RSS (and its anonymous part: the heap, without the file pages it maps, which the kernel may drop),
open files, threads and the size of its SQLite file and WAL are sampled. Growth is the least-squares
slope of each over the samples after warm-up, in MB per hour (target under 5), for two warm-ups:
3 minutes, and the first third of the run. Spool retention is set to 2 minutes, as a full appliance
reaches its steady state, so the disk stays bounded.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench import MAX_PDU, table
from peers import NodeProcess, Orthanc, storescu
from pydicom.uid import generate_uid

from edge_ai import phantoms

CYCLE_S = 1.5
SAMPLE_S = 10.0


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _sample(node: NodeProcess, started: float, sent: int, delivered: int) -> dict[str, float]:
    assert node.proc is not None
    status = _status(node.proc.pid)
    db = node.root / "var" / "spool" / "queue.sqlite3"
    wal = db.with_name(db.name + "-wal")
    # the process's own memory, swapped out or not
    anon_kib = sum(int(status[k].split()[0]) for k in ("RssAnon", "VmSwap") if k in status)
    return {"t": time.monotonic() - started,
            "rss": int(status["VmRSS"].split()[0]) / 1024,  # a node that has exited has none: the soak stops
            "anon": anon_kib / 1024,
            "fds": len(os.listdir(f"/proc/{node.proc.pid}/fd")), "threads": int(status["Threads"]),
            "db": db.stat().st_size / 1e6 if db.exists() else 0.0,
            "wal": wal.stat().st_size / 1e6 if wal.exists() else 0.0, "sent": sent, "delivered": delivered}


class _Load:
    """Writes each cycle's series with new UIDs and sends them, each on its own association."""

    def __init__(self, work: Path, dx_size: int, ct_size: int) -> None:
        rng = np.random.default_rng(5)
        self.work = work
        self.dx = [phantoms.dx_case(rng, size=dx_size, lesion=i % 2 == 0)[0] for i in range(5)]
        self.ct = phantoms.ct_case(rng, slices=30, size=ct_size, lesion=True)[0]
        self.errors: list[str] = []

    def write(self, cycle: int) -> list[list[Path]]:
        folder = self.work / f"soak-{cycle}"
        folder.mkdir()
        groups = []
        for i, ds in enumerate(self.dx):
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            phantoms.write_dataset(ds, folder / f"dx{i}.dcm")
            groups.append([folder / f"dx{i}.dcm"])
        study, series = generate_uid(), generate_uid()
        ct = []
        for i, ds in enumerate(self.ct):
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ct.append(folder / f"ct{i:02d}.dcm")
            phantoms.write_dataset(ds, ct[-1])
        return [*groups, ct]

    def send(self, port: int, groups: list[list[Path]]) -> None:
        for files in groups:
            out = storescu(port, files, extra=("--max-pdu", str(MAX_PDU)))
            if out.returncode != 0:
                self.errors.append(out.stderr[-500:])
        shutil.rmtree(groups[0][0].parent, ignore_errors=True)


def bench_soak(work: Path, minutes: float, dx_size: int, ct_size: int) -> None:
    pacs = Orthanc(work / "orthanc-soak").start()
    callers = [{"ae_title": "MODALITY", "hosts": ["127.0.0.1/32"], "sends": "series"}]
    node = NodeProcess(work / "node-soak", destinations=[pacs.destination()],
                       extra={"node": {"max_pdu_length": MAX_PDU, "allowed_callers": callers},
                              "storage": {"retention_days": 120 / 86400}})
    node.start()
    load = _Load(work, dx_size, ct_size)
    samples: list[dict[str, float]] = []
    series = 0
    try:
        time.sleep(2.0)
        started = time.monotonic()
        next_sample = started
        sending: list[Future[None]] = []
        with ThreadPoolExecutor(3) as pool:
            cycle = 0
            while time.monotonic() - started < minutes * 60:
                at = started + cycle * CYCLE_S
                time.sleep(max(0.0, at - time.monotonic()))
                sending = [f for f in sending if not f.done()]
                if len(sending) < 3:  # never queue sends without bound if the machine falls behind
                    sending.append(pool.submit(load.send, node.port, load.write(cycle)))
                    series += 6
                cycle += 1
                if time.monotonic() >= next_sample:
                    delivered = pacs.get("/statistics")["CountInstances"]
                    samples.append(_sample(node, started, series, delivered))
                    next_sample += SAMPLE_S
        deadline = time.monotonic() + 300
        while pacs.get("/statistics")["CountInstances"] < series and time.monotonic() < deadline:
            time.sleep(1.0)
        samples.append(_sample(node, started, series, pacs.get("/statistics")["CountInstances"]))
    finally:
        node.stop()
        pacs.stop()
    _report(samples, minutes, dx_size, ct_size, load.errors)


def _report(samples: list[dict[str, float]], minutes: float, dx_size: int, ct_size: int, errors: list[str]) -> None:
    step = max(1, len(samples) // 12)
    rows = [(f"{s['t'] / 60:.1f}", f"{s['rss']:.1f}", f"{s['anon']:.1f}", int(s["fds"]), int(s["threads"]),
             f"{s['db']:.1f}", f"{s['wal']:.1f}", int(s["sent"]), int(s["delivered"]))
            for s in samples[::step] + samples[-1:]]
    table(f"Soak: 5 DX {dx_size}x{dx_size} + CT 30 x {ct_size}x{ct_size} every {CYCLE_S} s, {minutes:g} min",
          ("min", "RSS MB", "anon MB", "open files", "threads", "SQLite MB", "WAL MB", "series sent",
           "SRs in PACS"), rows)
    # two windows: after the first 3 minutes (models and highdicom loaded), and the last two thirds (the
    # bounded caches that fill with use, the SQLite page caches and the dashboard's hour of readings, filled)
    for warm in sorted({min(180.0, samples[-1]["t"] / 3), samples[-1]["t"] / 3}):
        late = [s for s in samples[:-1] if s["t"] >= warm]
        if len(late) >= 3:
            t = np.array([s["t"] for s in late]) / 3600
            for key, name in (("rss", "RSS"), ("anon", "anonymous RSS")):
                slope = float(np.polyfit(t, np.array([s[key] for s in late]), 1)[0])
                print(f"{name} growth after {warm / 60:.1f} min warm-up: {slope:.1f} MB/hour (target < 5); "
                      f"{late[0][key]:.1f} -> {late[-1][key]:.1f} MB")
    last = samples[-1]
    print(f"delivered {int(last['delivered'])} of {int(last['sent'])} series' SRs; send errors: {len(errors)}")

