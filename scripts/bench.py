#!/usr/bin/env python3
"""edge_ai benchmarks, each beside a baseline measured in the same run on the same machine.

Sections (default: all):
  dx      DX time-to-result: storescu start -> SR stored in Orthanc, p50/p99 over --sends sends,
          beside storescu -> DCMTK storescp for the same file.
  ingest  A CT series (--ct-slices x 512 x 512) over 1 and 4 associations into DCMTK storescp
          (no fsync), Orthanc (fsync) and the node (Success only after fsync): instances/s and ratios.
  ct      CT time-to-result: association release (storescu exit) -> SR stored in Orthanc, and the
          model's slices/s on this CPU (from the node's audit), with the node's peak RSS.
  patterns  Series completion by delivery pattern (a --pattern-slices CT): sent whole by a caller that
          declared `sends: series`, sent whole by an undeclared caller, and one instance per association
          (storescu run per slice): last instance stored -> SR stored in Orthanc, beside the quiet window.
  rss     Node memory on a ~1 GB study (--rss-slices x 512 x 512 CT, one series, one association):
          RSS when idle, peak while receiving, peak while processing, and VmHWM, against 300 MB.
          Not part of the default run (it writes ~2 GB to disk and takes a few minutes).
  http    The HTTP API (scripts/bench_http.py): DX over POST /v1/predict with Prefer: wait vs the DIMSE
          path on the same node; STOW-RS of --ct-slices slices vs Orthanc's DICOMweb plugin; node RSS
          during one --http-rss-bytes STOW-RS request vs idle. Not part of the default run.
  stream  Results while the images arrive: association release -> SR in Orthanc for --stream-sizes CTs
          (default 100 and 400 slices: the ratio, target <= 1.3x) and a --ct-slices CT (target <= 0.5 s),
          then the node's peak RSS over idle for each of --stream-rss-slices (default 500 and 3000: growth
          per instance, target <= 2 KiB; add 10000 for the 5 GB case, target <= 100 MB, ~10 GB of disk).
  soak    One node under 5 DX and a 30-slice CT every 1.5 s for --soak-minutes (scripts/bench_soak.py):
          RSS, open files, threads, SQLite and WAL size over time; RSS growth after warm-up (target
          < 5 MB/hour). Not part of the default run.

Usage: python scripts/bench.py [dx ingest ct patterns rss http stream soak] [--sends 20] [--dx-size 2048]
       [--ct-slices 300] [--pattern-slices 60] [--rss-slices 2000] [--http-rss-bytes 2000000000]
       [--stream-sizes 100 400] [--stream-rss-slices 500 3000 [10000]] [--soak-minutes 10] [--soak-dx-size 1024]
       [--soak-ct-size 256]
The dx, ct and rss nodes declare their caller (AE MODALITY) with `sends: series`, as a site configures
a modality in node.allowed_callers; `patterns` shows what an undeclared caller gets.
Needs DCMTK and Orthanc (make system-deps). Prints tables; exits 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from peers import DCMTK, PEER_ENV, NodeProcess, Orthanc, dcmtk, free_port, storescu, wait_port  # noqa: E402

from edge_ai import phantoms  # noqa: E402

MAX_PDU = 131072  # the same maximum PDU on every receiver and on storescu


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def table(title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = [str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells))


# ---- receivers -----------------------------------------------------------------------------------
class Storescp:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        out = work / f"storescp-{self.port}"
        out.mkdir()
        self.proc = subprocess.Popen([str(DCMTK / "storescp"), "-od", str(out), "-aet", "EDGE_AI", "--max-pdu",
                                      str(MAX_PDU), str(self.port)], env=PEER_ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def start_node(work: Path, name: str, pacs: Orthanc | None = None, sends: str | None = "series") -> NodeProcess:
    """A node sending SRs to `pacs`; the benchmark's caller (AE MODALITY) declared with `sends` (None: not
    declared, any caller accepted)."""
    callers = [{"ae_title": "MODALITY", "hosts": ["127.0.0.1/32"], "sends": sends}] if sends else []
    node = NodeProcess(work / name, destinations=[pacs.destination()] if pacs else None,
                       extra={"node": {"max_pdu_length": MAX_PDU, "allowed_callers": callers}})
    return node.start()


def send_parallel(port: int, files: list[Path], associations: int, called: str) -> float:
    """Send `files` split over `associations` concurrent storescu processes; returns seconds."""
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    with ThreadPoolExecutor(associations) as pool:
        results = list(pool.map(lambda c: storescu(port, c, called=called, extra=("--max-pdu", str(MAX_PDU))),
                                chunks))
    elapsed = time.perf_counter() - start
    for r in results:
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
    return elapsed


# ---- data ----------------------------------------------------------------------------------------
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


def ct_files(folder: Path, slices: int, seed: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    datasets, _ = phantoms.ct_case(np.random.default_rng(seed), slices=slices, size=512, lesion=True)
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(folder / f"ct{i:04d}.dcm")
        phantoms.write_dataset(ds, paths[-1])
    return paths


def big_ct_files(folder: Path, slices: int, seed: int = 7) -> list[Path]:
    """One CT series of `slices` 512 x 512 slices (~0.5 MB each) without holding the volume in memory:
    a 60-slice phantom repeated along z with new instance UIDs and positions."""
    folder.mkdir(parents=True, exist_ok=True)
    base, _ = phantoms.ct_case(np.random.default_rng(seed), slices=60, size=512, lesion=True)
    paths = []
    for i in range(slices):
        ds = base[i % len(base)]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], -5.0 * i]
        ds.SliceLocation = -5.0 * i
        paths.append(folder / f"ct{i:05d}.dcm")
        phantoms.write_dataset(ds, paths[-1])
    return paths


def reidentify(files: list[Path], folder: Path) -> list[Path]:
    """Copies of a series with new UIDs, so a receiver that deduplicates still stores every instance."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    series, out = generate_uid(), []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(folder / f.name)
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def wait_instances(pacs: Orthanc, more_than: int, timeout: float = 120) -> float:
    deadline = time.perf_counter() + timeout
    while pacs.get("/statistics")["CountInstances"] <= more_than:
        if time.perf_counter() > deadline:
            raise RuntimeError("nothing new in Orthanc in time")
        time.sleep(0.005)
    return time.perf_counter()


def peak_rss_mb(node: NodeProcess, field: str = "VmHWM") -> float:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples the node's VmRSS every 20 ms; `mark(phase)` starts a new phase, `peaks` per phase in MB."""

    def __init__(self, node: NodeProcess) -> None:
        import threading

        self.node, self.phase, self.peaks = node, "idle", {"idle": peak_rss_mb(node, "VmRSS")}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                rss = peak_rss_mb(self.node, "VmRSS")
            except OSError:
                return
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def mark(self, phase: str) -> None:
        self.phase = phase

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


# ---- sections ------------------------------------------------------------------------------------
def bench_dx(work: Path, sends: int, size: int) -> None:
    files = dx_files(work, sends, size)
    scp = Storescp(work)
    baseline = []
    for f in files:
        start = time.perf_counter()
        storescu(scp.port, [f])
        baseline.append(time.perf_counter() - start)
    scp.stop()
    pacs = Orthanc(work / "orthanc-dx").start()
    node = start_node(work, "node-dx", pacs)
    results = []
    try:
        for f in files:
            before = pacs.get("/statistics")["CountInstances"]
            start = time.perf_counter()
            if storescu(node.port, [f]).returncode != 0:
                raise RuntimeError(node.log())
            results.append(wait_instances(pacs, before, 30) - start)
    finally:
        node.stop()
        pacs.stop()
    table(f"DX {size}x{size} ({files[0].stat().st_size / 1e6:.1f} MB), {sends} sends",
          ("path", "p50 s", "p99 s", "max s"),
          [("DCMTK storescu -> storescp (stored)", f"{pct(baseline, 50):.3f}", f"{pct(baseline, 99):.3f}",
            f"{max(baseline):.3f}"),
           ("edge_ai storescu -> SR in Orthanc", f"{pct(results, 50):.3f}", f"{pct(results, 99):.3f}",
            f"{max(results):.3f}")])
    met = pct(results, 50) <= 0.5 and pct(results, 99) <= 1
    print(f"ratio p50 edge_ai time-to-result / storescp store: {pct(results, 50) / pct(baseline, 50):.1f}x; "
          f"target p50 <= 0.5 s, p99 <= 1 s: {'met' if met else 'NOT met'}")


EATMYDATA = Path("/usr/lib/x86_64-linux-gnu/libeatmydata.so")


def bench_ingest(work: Path, slices: int, repeat: int = 3) -> None:
    """Each receiver in turn, `repeat` rounds (the median is shown: the machine is shared). A diagnostic
    row runs the node with fsync turned into a no-op by libeatmydata (where installed), to separate the
    disk's share from the software's: it is not a mode the product has."""
    files = ct_files(work / "ct-ingest", slices)
    rows = []

    def storescp() -> tuple[int, str, Callable[[], None]]:
        scp = Storescp(work)
        return scp.port, "EDGE_AI", scp.stop

    def orthanc() -> tuple[int, str, Callable[[], None]]:
        pacs = Orthanc(work / f"orthanc-ingest-{time.time_ns()}").start()
        return pacs.dicom_port, pacs.aet, pacs.stop

    def node(env: dict[str, str] | None = None) -> tuple[int, str, Callable[[], None]]:
        n = NodeProcess(work / f"node-ingest-{time.time_ns()}", extra={"node": {"max_pdu_length": MAX_PDU}})
        n.start(env=env)
        return n.port, "EDGE_AI", n.stop

    no_fsync = "edge_ai, fsync a no-op (diagnostic)"
    receivers: list[tuple[str, Callable[[], tuple[int, str, Callable[[], None]]]]] = [
        ("DCMTK storescp (no fsync)", storescp), ("Orthanc (fsync)", orthanc), ("edge_ai (fsync)", node)]
    if EATMYDATA.exists():
        receivers.append((no_fsync, lambda: node({"LD_PRELOAD": str(EATMYDATA)})))
    rates: dict[tuple[str, int], float] = {}
    for assocs in (1, 4):
        measured: dict[str, list[float]] = {name: [] for name, _ in receivers}
        for _ in range(repeat):  # receivers take turns in each round: a busy moment of the host hits all
            for name, make in receivers:
                if assocs > 1 and name == no_fsync:
                    continue
                folder = work / f"send-{time.time_ns()}"
                batch = reidentify(files, folder)
                port, aet, stop = make()
                try:
                    seconds = send_parallel(port, batch, assocs, aet)
                finally:
                    stop()
                    shutil.rmtree(folder, ignore_errors=True)  # 158 MB a round
                measured[name].append(len(files) / seconds)
        for name, values in measured.items():
            if values:
                rates[(name, assocs)] = float(np.median(values))
                spread = f" ({min(values):.0f}-{max(values):.0f})" if len(values) > 1 else ""
                rows.append((name, assocs, f"{rates[(name, assocs)]:.0f}{spread}"))
    table(f"Ingest: {len(files)} CT slices 512x512 ({sum(f.stat().st_size for f in files) / 1e6:.0f} MB), "
          f"max PDU {MAX_PDU}, median of {repeat} rounds (range in brackets)",
          ("receiver", "associations", "instances/s"), rows)
    for assocs in (1, 4):
        node_rate = rates[("edge_ai (fsync)", assocs)]
        print(f"{assocs} assoc: edge_ai/storescp {node_rate / rates[('DCMTK storescp (no fsync)', assocs)]:.2f}x "
              f"(target >= 0.5x), edge_ai/Orthanc {node_rate / rates[('Orthanc (fsync)', assocs)]:.2f}x "
              f"(target >= 1.2x)")
    if (no_fsync, 1) in rates:
        print(f"diagnostic: without fsync the node reaches {rates[(no_fsync, 1)]:.0f}/s "
              f"({rates[(no_fsync, 1)] / rates[('DCMTK storescp (no fsync)', 1)]:.2f}x storescp)")


def bench_ct(work: Path, slices: int) -> None:
    files = reidentify(ct_files(work / "ct-ttr", slices, seed=5), work / "ct-ttr-send")
    pacs = Orthanc(work / "orthanc-ct").start()
    node = start_node(work, "node-ct", pacs)
    try:
        before = pacs.get("/statistics")["CountInstances"]
        start = time.perf_counter()
        out = storescu(node.port, files, extra=("--max-pdu", str(MAX_PDU)))
        released = time.perf_counter()
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        released_wall = time.time()
        done = wait_instances(pacs, before, 300)
        rss = peak_rss_mb(node)
        events = node.audit_events()
        inference = [e for e in events if e["event"] == "inference"][-1]
    finally:
        node.stop()
        pacs.stop()
    timeline(events, released_wall, done - released)
    table(f"CT {slices} slices 512x512", ("measure", "value"), [
        ("send (storescu start -> release)", f"{released - start:.2f} s"),
        ("release -> SR stored in Orthanc", f"{done - released:.2f} s"),
        ("inference+imaging (audit)", f"{inference['duration_s']:.2f} s"),
        ("model slices/s on CPU", f"{slices / inference['duration_s']:.0f}"),
        ("node peak RSS", f"{rss:.0f} MB"),
    ])
    print(json.dumps({"runtime": inference["runtime"], "model": inference["model"]}))


def bench_patterns(work: Path, slices: int) -> None:
    """Last instance stored -> SR in Orthanc for the same CT sent three ways (see the module docstring)."""
    files = ct_files(work / "ct-patterns", slices, seed=11)
    pacs = Orthanc(work / "orthanc-patterns").start()
    rows = []
    try:
        for label, sends, per_instance in (("whole series, caller declared sends: series", "series", False),
                                           ("whole series, caller not declared", None, False),
                                           ("one instance per association, not declared", None, True)):
            node = start_node(work, f"node-{len(rows)}", pacs, sends)
            try:
                copies = reidentify(files, work / f"ct-patterns-{len(rows)}")
                before = pacs.get("/statistics")["CountInstances"]
                start = time.perf_counter()
                for chunk in ([[f] for f in copies] if per_instance else [copies]):
                    out = storescu(node.port, chunk, extra=("--max-pdu", str(MAX_PDU)))
                    if out.returncode != 0:
                        raise RuntimeError(out.stderr[-2000:])
                last = time.perf_counter()
                done = wait_instances(pacs, before, 120)
                srs = len([e for e in node.audit_events() if e["event"] == "sr.created"])
            finally:
                node.stop()
            rows.append((label, f"{last - start:.2f} s", f"{done - last:.2f} s", srs))
    finally:
        pacs.stop()
    table(f"Series completion by delivery pattern, CT {slices} slices 512x512 (grouping.quiet_window_s 2)",
          ("pattern", "send", "last instance -> SR in Orthanc", "SRs"), rows)
    target = float(rows[2][2].split()[0]) <= 2.0 + 1.5 and all(r[3] == 1 for r in rows)
    print(f"target one instance per association: SR within quiet window + 1.5 s, one SR each: "
          f"{'met' if target else 'NOT met'}")


def timeline(events: list[dict[str, Any]], released: float, stored: float) -> None:
    """When each step of the job ended, in seconds after storescu exited (audit times, 1 ms)."""
    import datetime

    steps = [("job.state", "inferring", "job claimed by the worker"), ("inference", None, "imaging + inference done"),
             ("sr.created", None, "SR built, written, fsync'd"), ("job.state", "reported", "job reported")]
    rows = []
    for event, state, label in steps:
        hits = [e for e in events
                if e["event"] == event and (state is None or state in (e.get("state"), e.get("outcome")))]
        if hits:
            at = datetime.datetime.fromisoformat(hits[-1]["time"].replace("Z", "+00:00")).timestamp()
            rows.append((label, f"{at - released:+.2f} s"))
    rows.append(("SR stored in Orthanc (REST poll)", f"{stored:+.2f} s"))
    table("CT job timeline (audit time - storescu exit)", ("step", "at"), rows)


def bench_rss(work: Path, slices: int) -> None:
    files = big_ct_files(work / "ct-rss", slices)
    size_gb = sum(f.stat().st_size for f in files) / 1e9
    pacs = Orthanc(work / "orthanc-rss").start()
    node = start_node(work, "node-rss", pacs)
    try:
        time.sleep(1.0)  # settled after start-up (model self-tests)
        sampler = RssSampler(node)
        before = pacs.get("/statistics")["CountInstances"]
        sampler.mark("receive")
        start = time.perf_counter()
        out = storescu(node.port, files, extra=("--max-pdu", str(MAX_PDU)))
        released = time.perf_counter()
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        sampler.mark("process")
        done = wait_instances(pacs, before, 900)
        time.sleep(0.1)
        peaks = sampler.stop()
        hwm = peak_rss_mb(node)
        inference = [e for e in node.audit_events() if e["event"] == "inference"][-1]
    finally:
        node.stop()
        pacs.stop()
    table(f"Node memory, one CT series of {slices} slices 512x512 ({size_gb:.2f} GB)", ("measure", "value"), [
        ("send (storescu start -> release)", f"{released - start:.1f} s"),
        ("release -> SR stored in Orthanc", f"{done - released:.1f} s"),
        ("inference+imaging (audit)", f"{inference['duration_s']:.1f} s"),
        ("node RSS idle (after start-up)", f"{peaks['idle']:.0f} MB"),
        ("node peak RSS while receiving", f"{peaks.get('receive', float('nan')):.0f} MB"),
        ("node peak RSS while processing", f"{peaks.get('process', float('nan')):.0f} MB"),
        ("node VmHWM (whole run, start-up included)", f"{hwm:.0f} MB"),
    ])
    print(f"target VmHWM <= 300 MB whatever the study size: {'met' if hwm <= 300 else 'NOT met'}")


def release_to_sr(work: Path, pacs: Orthanc, node: NodeProcess, files: list[Path]) -> tuple[float, float]:
    """(send seconds, association release -> SR stored in `pacs` seconds) for one series in one association."""
    before = pacs.get("/statistics")["CountInstances"]
    start = time.perf_counter()
    out = dcmtk("storescu", "-aet", "MODALITY", "-aec", "EDGE_AI", "--max-pdu", str(MAX_PDU), "127.0.0.1",
                str(node.port), *map(str, files), timeout=3600)
    released = time.perf_counter()
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return released - start, wait_instances(pacs, before, 900) - released


def bench_stream(work: Path, sizes: tuple[int, int], pacs_slices: int, rss_slices: list[int]) -> None:
    """Results while the images arrive: release -> SR for a small and a large CT and their ratio, the
    target CT, and the node's peak RSS over idle for big series (growth per instance between them)."""
    pacs = Orthanc(work / "orthanc-stream").start()
    rows = []
    try:
        node = start_node(work, "node-stream", pacs)
        times: dict[int, float] = {}
        try:
            for n in (*sizes, pacs_slices):
                files = reidentify(ct_files(work / f"ct-stream-{n}", n, seed=5), work / f"ct-stream-send-{n}")
                send, ttr = release_to_sr(work, pacs, node, files)
                times[n] = ttr
                rows.append((f"CT {n} slices 512x512: send / release -> SR in Orthanc", f"{send:.2f} s",
                             f"{ttr:.2f} s"))
        finally:
            node.stop()
        peaks: dict[int, tuple[float, float]] = {}
        for n in rss_slices:
            files = big_ct_files(work / f"ct-stream-rss-{n}", n)
            node = start_node(work, f"node-stream-rss-{n}", pacs)
            try:
                time.sleep(1.0)  # settled after start-up (model self-tests)
                sampler = RssSampler(node)
                sampler.mark("run")
                send, ttr = release_to_sr(work, pacs, node, files)
                peaks[n] = (sampler.stop()["idle"], sampler.peaks.get("run", float("nan")))
            finally:
                node.stop()
            for f in files:
                f.unlink()
            rows.append((f"CT {n} slices: idle RSS / peak RSS over idle (send {send:.1f} s, release -> SR "
                         f"{ttr:.2f} s)", f"{peaks[n][0]:.0f} MB", f"+{peaks[n][1] - peaks[n][0]:.0f} MB"))
    finally:
        pacs.stop()
    table("Streaming: results while the images arrive (caller declared sends: series)", ("measure", "", ""), rows)
    small, large = sizes
    print(f"release -> SR ratio {large}/{small} slices: {times[large] / times[small]:.2f}x (target <= 1.3x); "
          f"CT {pacs_slices}: {times[pacs_slices]:.2f} s (target <= 0.5 s)")
    if len(rss_slices) >= 2:
        a, b = sorted(rss_slices)[:2]
        per = ((peaks[b][1] - peaks[b][0]) - (peaks[a][1] - peaks[a][0])) * 1024 / (b - a)
        print(f"peak RSS growth per instance {a} -> {b} slices: {per:.2f} KiB (target <= 2 KiB)")
    big = max(rss_slices)
    print(f"peak RSS over idle, {big} slices: {peaks[big][1] - peaks[big][0]:.0f} MB (target <= 100 MB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", default=["dx", "ingest", "ct", "patterns", "stream"],
                        choices=["dx", "ingest", "ct", "patterns", "rss", "http", "stream", "soak"])
    parser.add_argument("--sends", type=int, default=20)
    parser.add_argument("--dx-size", type=int, default=2048)
    parser.add_argument("--ct-slices", type=int, default=300)
    parser.add_argument("--pattern-slices", type=int, default=60)
    parser.add_argument("--rss-slices", type=int, default=2000)
    parser.add_argument("--http-rss-bytes", type=int, default=2_000_000_000)
    parser.add_argument("--stream-sizes", type=int, nargs=2, default=[100, 400])
    parser.add_argument("--stream-rss-slices", type=int, nargs="*", default=[500, 3000],
                        help="series sizes for peak RSS (10000: the 5 GB case, ~10 GB of disk)")
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--soak-dx-size", type=int, default=1024)
    parser.add_argument("--soak-ct-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-ai-bench-") as tmp:
        work = Path(tmp)
        if "dx" in args.sections:
            bench_dx(work, args.sends, args.dx_size)
        if "ingest" in args.sections:
            bench_ingest(work, args.ct_slices)
        if "ct" in args.sections:
            bench_ct(work, args.ct_slices)
        if "patterns" in args.sections:
            bench_patterns(work, args.pattern_slices)
        if "rss" in args.sections:
            bench_rss(work, args.rss_slices)
        if "http" in args.sections:
            import bench_http

            bench_http.bench_predict(work, args.sends, args.dx_size, table, pct)
            bench_http.bench_stow(work, args.ct_slices, table)
            bench_http.bench_rss(work, args.http_rss_bytes, table)
        if "stream" in args.sections:
            bench_stream(work, tuple(args.stream_sizes), args.ct_slices, args.stream_rss_slices)
        if "soak" in args.sections:
            from bench_soak import bench_soak

            bench_soak(work, args.soak_minutes, args.soak_dx_size, args.soak_ct_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
