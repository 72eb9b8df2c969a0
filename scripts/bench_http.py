"""The `http` section of scripts/bench.py: the HTTP face beside baselines measured in the same run.

  predict  DX (--dx-size) over POST /v1/predict/{model} with Prefer: wait (request start -> 200 with the
           finding, the SR written) vs the DIMSE path on the same node (storescu start -> the job's SR
           written, from the audit), sends interleaved; p50/p99.
  stow     STOW-RS of --ct-slices CT slices 512x512 in one multipart request into the node vs Orthanc's
           DICOMweb plugin (Debian orthanc-dicomweb, fsync on): instances/s, median of 5 alternating rounds.
  rss      The node's RSS while it receives one ~2 GB STOW-RS request (streamed by the client, parts made on
           the fly) vs idle: peak VmRSS (20 ms samples) and VmHWM after resetting it.
"""

from __future__ import annotations

import datetime
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from peers import ORTHANC_DICOMWEB, NodeProcess, Orthanc, reset_peak_rss, storescu
from pydicom.uid import generate_uid

from edge_ai import phantoms

BOUNDARY = "edge-ai-bench-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _node(work: Path, name: str, **extra: Any) -> tuple[NodeProcess, str]:
    """A node whose DIMSE caller (storescu, AE MODALITY) is declared `sends: series`, as bench.py's are: its
    series are complete at release, as an HTTP request's are at its end."""
    callers = [{"ae_title": "MODALITY", "hosts": ["127.0.0.1/32"], "sends": "series"}]
    node = NodeProcess(work / name, extra={"node": {"max_pdu_length": 131072, "allowed_callers": callers},
                                           **extra})
    node.write_config()
    key = node.api_key("bench", "submit,read")
    node.start()
    return node, key


def _audit_time(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()


def _sr_written_at(node: NodeProcess, series_uid: str, timeout: float = 60) -> float:
    """Wall time the job of `series_uid` became reported (its SR written and fsync'd), from the audit; reads
    only the lines added since the last look, so polling costs the node next to nothing."""
    deadline = time.monotonic() + timeout
    with node.audit_path.open() as f:
        pending = ""
        while time.monotonic() < deadline:
            pending += f.read()
            lines, _, pending = pending.rpartition("\n")
            for line in lines.splitlines():
                if series_uid in line and '"reported"' in line:
                    e = json.loads(line)
                    if e["event"] == "job.state" and e.get("state") == "reported":
                        return _audit_time(e)
            time.sleep(0.005)
    raise RuntimeError(f"no SR for {series_uid}\n{node.log()[-3000:]}")


def bench_predict(work: Path, sends: int, size: int, table: Callable[..., None], pct: Callable[..., float]) -> None:
    ds, _ = phantoms.dx_case(np.random.default_rng(1), size=size, lesion=True)
    node, key = _node(work, "node-predict", grouping={"series_timeout_s": 5})
    http_s, dimse_s = [], []
    try:
        with httpx.Client(base_url=node.http_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
            for i in range(sends + 1):  # the first pair warms both paths up and is not counted
                ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                path = work / f"dx{i:03d}.dcm"
                phantoms.write_dataset(ds, path)
                start = time.time()
                out = storescu(node.port, [path], extra=("--max-pdu", "131072"))
                if out.returncode != 0:
                    raise RuntimeError(out.stderr)
                dimse = _sr_written_at(node, str(ds.SeriesInstanceUID)) - start
                ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                body = buf.getvalue()
                start = time.perf_counter()
                r = c.post("/v1/predict/demo-chest-xr", content=body,
                           headers={"Content-Type": "application/dicom", "Prefer": "wait=30"})
                took = time.perf_counter() - start
                if r.status_code != 200 or r.json()["state"] != "done":
                    raise RuntimeError(r.text)
                if i:
                    http_s.append(took)
                    dimse_s.append(dimse)
    finally:
        node.stop()
    rows = [(name, f"{pct(v, 50) * 1000:.0f}", f"{pct(v, 99) * 1000:.0f}", f"{max(v) * 1000:.0f}")
            for name, v in (("DIMSE: storescu start -> SR written", dimse_s),
                            ("HTTP: POST /v1/predict, Prefer: wait -> 200 with the finding", http_s))]
    table(f"DX {size}x{size} ({len(body) / 1e6:.1f} MB), {sends} sends each, interleaved, same node",
          ("path", "p50 ms", "p99 ms", "max ms"), rows)
    gap = (pct(http_s, 50) - pct(dimse_s, 50)) * 1000
    print(f"p50 HTTP - DIMSE: {gap:+.0f} ms (target within 50 ms): {'met' if gap <= 50 else 'NOT met'}")


def _ct_parts(work: Path, slices: int) -> list[bytes]:
    """One CT series as Part-10 bytes (the phantom repeated along z), new UIDs per call."""
    base, _ = phantoms.ct_case(np.random.default_rng(3), slices=min(slices, 60), size=512, lesion=True)
    series, parts = generate_uid(), []
    for i in range(slices):
        ds = base[i % len(base)]
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        parts.append(buf.getvalue())
    return parts


def _multipart(parts: Iterator[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield part
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def _stow(url: str, parts: list[bytes], headers: dict[str, str]) -> float:
    with httpx.Client(timeout=600) as c:
        start = time.perf_counter()
        r = c.post(url, content=b"".join(_multipart(iter(parts))), headers={**headers, "Content-Type": CONTENT_TYPE})
        took = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"{url}: {r.status_code} {r.text[:500]}")
    return took


def bench_stow(work: Path, slices: int, table: Callable[..., None], rounds: int = 5) -> None:
    node, key = _node(work, "node-stow")
    pacs = Orthanc(work / "orthanc-dicomweb", plugins=[ORTHANC_DICOMWEB]).start()
    rates: dict[str, list[float]] = {"Orthanc DICOMweb plugin (fsync)": [], "edge_ai STOW-RS (fsync)": []}
    size = 0
    try:
        for _ in range(rounds):
            parts = _ct_parts(work, slices)
            size = sum(len(p) for p in parts)
            rates["Orthanc DICOMweb plugin (fsync)"].append(
                slices / _stow(f"http://127.0.0.1:{pacs.http_port}/dicom-web/studies", parts, {}))
            parts = _ct_parts(work, slices)
            rates["edge_ai STOW-RS (fsync)"].append(
                slices / _stow(f"{node.http_url}/dicomweb/studies", parts, {"Authorization": f"Bearer {key}"}))
    finally:
        node.stop()
        pacs.stop()
    med = {k: float(np.median(v)) for k, v in rates.items()}
    table(f"STOW-RS: {slices} CT slices 512x512 ({size / 1e6:.0f} MB) in one request, median of {rounds}",
          ("receiver", "instances/s", "rounds"),
          [(k, f"{med[k]:.0f}", " ".join(f"{x:.0f}" for x in v)) for k, v in rates.items()])
    ratio = med["edge_ai STOW-RS (fsync)"] / med["Orthanc DICOMweb plugin (fsync)"]
    print(f"edge_ai / Orthanc DICOMweb: {ratio:.2f}x (target >= 1.2x): {'met' if ratio >= 1.2 else 'NOT met'}")


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _same_length_uid(template: str, i: int) -> bytes:
    """A UID as long as `template` (so it replaces it in place, lengths unchanged), unique per i."""
    prefix = "1.2.826.0.1.3680043.8.498.9."
    return (prefix + str(i).rjust(len(template) - len(prefix), "1")).encode()


def bench_rss(work: Path, total_bytes: int, table: Callable[..., None]) -> None:
    base, _ = phantoms.ct_case(np.random.default_rng(7), slices=1, size=512, lesion=False)
    buf = io.BytesIO()
    base[0].save_as(buf, enforce_file_format=True)
    template, uid = buf.getvalue(), str(base[0].SOPInstanceUID)
    count = total_bytes // len(template) + 1
    # no analysis: this measures the request, not a 4000-slice job afterwards
    node, key = _node(work, "node-rss", routing=[], storage={"retention_days": 0})
    pid = node.proc.pid if node.proc else 0
    try:
        time.sleep(2.0)
        idle_start = _rss_mb(pid, "VmRSS")
        with httpx.Client(timeout=60) as c:  # one small request first: code paths loaded, thread pools up
            c.post(f"{node.http_url}/dicomweb/studies", content=b"".join(_multipart(iter(
                [template.replace(uid.encode(), _same_length_uid(uid, count + i)) for i in range(4)]))),
                headers={"Authorization": f"Bearer {key}", "Content-Type": CONTENT_TYPE}).raise_for_status()
        time.sleep(2.0)
        idle = _rss_mb(pid, "VmRSS")
        reset_peak_rss(pid)
        peak = [idle]
        done = [False]

        def parts() -> Iterator[bytes]:
            for i in range(count):
                yield template.replace(uid.encode(), _same_length_uid(uid, i))

        import threading

        def sample() -> None:
            while not done[0]:
                peak[0] = max(peak[0], _rss_mb(pid, "VmRSS"))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.perf_counter()
        with httpx.Client(timeout=1800) as c:
            r = c.post(f"{node.http_url}/dicomweb/studies", content=_multipart(parts()),
                       headers={"Authorization": f"Bearer {key}", "Content-Type": CONTENT_TYPE})
        took = time.perf_counter() - start
        done[0] = True
        sampler.join()
        hwm = _rss_mb(pid, "VmHWM")
        stored = len(pydicom.Dataset.from_json(r.json()).get("ReferencedSOPSequence", []))
    finally:
        node.stop()
    sent = count * len(template)
    table(f"Node memory during one STOW-RS request of {sent / 1e9:.2f} GB ({count} instances, chunked)",
          ("measure", "value"), [
              ("status / instances stored", f"{r.status_code} / {stored}"),
              ("request time", f"{took:.1f} s ({sent / took / 1e6:.0f} MB/s)"),
              ("node RSS idle after start-up", f"{idle_start:.1f} MB"),
              ("node RSS idle after one small STOW-RS request", f"{idle:.1f} MB"),
              ("node peak RSS during the request (20 ms samples)", f"{peak[0]:.1f} MB"),
              ("node VmHWM since reset (to the answer; the series' job starts then)", f"{hwm:.1f} MB"),
          ])
    growth = max(peak[0], hwm) - idle
    print(f"peak - idle: {growth:+.1f} MB (target within 20 MB): {'met' if growth <= 20 else 'NOT met'}; "
          f"against idle after start-up {max(peak[0], hwm) - idle_start:+.1f} MB")
