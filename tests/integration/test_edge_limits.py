"""Limits: association storms, stalled peers (plain and TLS), PDU length bombs and pixel size bombs leave
the node serving real modalities, within bounded time and memory (figures are printed)."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import needs_dcmtk
from peers import (
    associate_rq,
    dataset_bytes,
    echo_ok,
    make_pki,
    raw_c_store,
    recv_pdu,
    storescu,
    tls_args,
    vm_kib,
    wait_for,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless, generate_uid

from edge_ai.dicom import contexts, status

pytestmark = [pytest.mark.integration, needs_dcmtk]

SOCKET_TIMEOUT = 3
MB = 1024 * 1024
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def _one_association(port: int, results: list[str]) -> None:
    """A complete raw association: request, then release if accepted."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(associate_rq())
            answer = recv_pdu(s)
            if answer[:1] == b"\x02":
                s.sendall(RELEASE_RQ)
                recv_pdu(s)
                results.append("accepted")
            elif answer[:1] == b"\x03":
                results.append(f"rejected {answer[7]}/{answer[8]}/{answer[9]}")
            else:
                results.append(f"other {answer[:1]!r}")
    except OSError as exc:
        results.append(f"error {type(exc).__name__}")


def test_storm_of_100_associations_leaves_echo_within_5s(node_factory: Any) -> None:
    """100 simultaneous associations against max_associations 16: each gets a clean answer (accept or
    A-ASSOCIATE-RJ local limit exceeded) and a normal C-ECHO succeeds within 5 s after."""
    node = node_factory(extra={"node": {"max_associations": 16}}).start()
    results: list[str] = []
    threads = [threading.Thread(target=_one_association, args=(node.port, results)) for _ in range(100)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    storm = time.monotonic() - start
    after = time.monotonic()
    ok = wait_for(lambda: echo_ok(node.port, timeout=5), 5, interval=0.1)
    echo_s = time.monotonic() - after
    counts = {r: results.count(r) for r in set(results)}
    print(f"storm of 100: {counts} in {storm:.2f} s; C-ECHO after the storm answered in {echo_s:.2f} s")
    assert len(results) == 100
    assert set(counts) <= {"accepted", "rejected 2/3/2"}, counts  # transient, provider (presentation), limit
    assert counts.get("accepted", 0) >= 16
    assert ok and echo_s <= 5


P_DATA_HEADER_ONLY = b"\x04\x00\x00\x00\x10\x00"  # announces 4096 bytes, none follow


def _stall(port: int, kind: str, ctx: ssl.SSLContext | None = None) -> socket.socket:
    """A peer that stops: 'silent' (connects, sends nothing), 'header' (6 bytes of an A-ASSOCIATE-RQ),
    'established' (association accepted, then a P-DATA header and nothing more: it holds a slot)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if kind == "silent":
        return s
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    if kind == "header":
        s.sendall(associate_rq()[:6])
    else:
        s.sendall(associate_rq())
        assert recv_pdu(s)[:1] == b"\x02", "association accepted"
        s.sendall(P_DATA_HEADER_ONLY)
    return s


def _modality_gets_in(port: int, *extra: str) -> tuple[bool, float]:
    start = time.monotonic()
    ok = wait_for(lambda: echo_ok(port, *extra, timeout=10), SOCKET_TIMEOUT + 5, interval=0.2)
    return bool(ok), time.monotonic() - start


def test_stalled_plain_sockets_do_not_lock_out_a_modality(node_factory: Any) -> None:
    """16 silent, 16 header-only and 16 established-then-stalled sockets (all 16 slots taken): a real
    modality is in within socket timeout + 5 s, and every stalled peer is dropped and audited."""
    limits = {"max_associations": 16, "timeouts": {"socket": SOCKET_TIMEOUT}}
    node = node_factory(extra={"node": limits}).start()
    stalled = [_stall(node.port, kind) for kind in ("silent", "header", "established") for _ in range(16)]
    try:
        assert not echo_ok(node.port), "all slots are held by the stalled associations"
        ok, elapsed = _modality_gets_in(node.port)
        dropped = wait_for(lambda: len(_dropped(node)) >= 48 and _dropped(node), SOCKET_TIMEOUT + 5)
    finally:
        for s in stalled:
            s.close()
    print(f"plain: 16 silent + 16 header-only + 16 established stalls, modality in after {elapsed:.2f} s "
          f"(socket timeout {SOCKET_TIMEOUT} s)")
    assert ok and elapsed <= SOCKET_TIMEOUT + 5
    assert dropped, f"stalled peers are dropped and audited: {len(_dropped(node))} of 48"


def _dropped(node: Any) -> list[dict[str, Any]]:
    return [e for e in node.audit_events() if e["event"] in ("connection.dropped", "association.dropped")]


def test_stalled_tls_sockets_do_not_lock_out_a_modality(node_factory: Any, tmp_path: Path) -> None:
    """16 sockets stuck before their TLS handshake, 16 after it mid-PDU and 16 established TLS associations
    stalled: a TLS modality still gets in within socket timeout + 5 s."""
    pki = make_pki(tmp_path / "pki")
    tls = {"enabled": True, "certificate": str(pki["server"]), "private_key": str(pki["server_key"]),
           "ca_certificates": str(pki["ca"])}
    node = node_factory(extra={"node": {"max_associations": 16, "tls": tls, "timeouts": {
        "socket": SOCKET_TIMEOUT, "tls_handshake": SOCKET_TIMEOUT}}}).start()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki["ca"]))
    ctx.load_cert_chain(str(pki["client"]), str(pki["client_key"]))
    kinds = ("silent", "header", "established")
    stalled = [_stall(node.port, kind, ctx) for kind in kinds for _ in range(16)]
    try:
        assert not echo_ok(node.port, *tls_args(pki)), "all slots are held by the stalled associations"
        ok, elapsed = _modality_gets_in(node.port, *tls_args(pki))
    finally:
        for s in stalled:
            s.close()
    print("TLS: 16 pre-handshake + 16 header-only + 16 established stalls, "
          f"modality in after {elapsed:.2f} s "
          f"(socket and handshake timeout {SOCKET_TIMEOUT} s)")
    assert ok and elapsed <= SOCKET_TIMEOUT + 5


def _stream_after_claim(port: int, header: bytes, prefix: bytes = b"", stream_mb: int = 256) -> bytes:
    """Send `prefix`, then `header`, then up to `stream_mb` MiB of body; return what the node answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if prefix:
            s.sendall(prefix)
            assert recv_pdu(s)[:1] == b"\x02"
        s.sendall(header)
        chunk = b"\x00" * MB
        try:
            for _ in range(stream_mb):
                s.sendall(chunk)
        except OSError:
            pass  # the node hung up, as it should
        try:
            return recv_pdu(s)
        except OSError:
            return b""


@pytest.mark.parametrize("where", ["associate-rq", "p-data"])
def test_4gib_pdu_length_claim_is_aborted_without_buffering(node_factory: Any, where: str) -> None:
    """A PDU header claiming 4 GiB (then a stream of data) is aborted; the node's memory grows by <= 64 MB."""
    node = node_factory().start()
    assert echo_ok(node.port)
    before = vm_kib(node.proc.pid)
    if where == "associate-rq":
        answer = _stream_after_claim(node.port, b"\x01\x00\xff\xff\xff\xff")
    else:
        answer = _stream_after_claim(node.port, b"\x04\x00\xff\xff\xff\xff", prefix=associate_rq())
    after = vm_kib(node.proc.pid)
    growth_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
    print(f"4 GiB claim ({where}): RSS {before['VmRSS'] / 1024:.1f} MB -> "
          f"peak {after['VmHWM'] / 1024:.1f} MB, "
          f"growth {growth_mb:.1f} MB; node answered {answer[:1]!r}")
    assert answer[:1] in (b"\x07", b""), "an A-ABORT (or a closed connection), nothing else"
    assert growth_mb <= 64
    aborted = wait_for(lambda: [e for e in node.audit_events() if e["event"] == "association.aborted"
                                and "above the limit" in e.get("reason", "")], 5)
    assert aborted
    assert echo_ok(node.port), "the node keeps serving"


def _rle_bomb(folder: Path) -> Path:
    """~100 bytes of RLE pixel data whose header claims 65535 x 65535 x 16 bits (8 GiB decoded)."""
    ds = Dataset()
    ds.SOPClassUID = contexts.DX_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "DX", "BOMB"
    ds.Rows = ds.Columns = 65535
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    rle_header = struct.pack("<16L", 2, 64, 70, *([0] * 13))
    ds.PixelData = encapsulate([rle_header + b"\x81\x00" * 3 + b"\x81\x00" * 3])
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = RLELossless
    path = folder / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rle_size_bomb_is_rejected_before_decode(node_factory: Any, tmp_path: Path) -> None:
    """An RLE instance claiming 65535 x 65535 pixels is refused (0xC000, reason names the limit) before any
    decode, over DCMTK storescu and a raw C-STORE, with <= 64 MB memory growth; nothing is stored."""
    node = node_factory().start()
    bomb = _rle_bomb(tmp_path)
    assert len(pydicom.dcmread(bomb).PixelData) < 200
    assert echo_ok(node.port)
    before = vm_kib(node.proc.pid)
    out = storescu(node.port, [bomb], extra=("-xr", "-v"))
    said = out.stdout + out.stderr
    assert "Error: CannotUnderstand" in said or "0xc000" in said.lower(), said
    ds = pydicom.dcmread(bomb, stop_before_pixels=True)
    code = raw_c_store(node.port, contexts.DX_PRESENTATION, RLELossless, contexts.DX_PRESENTATION,
                       ds.SOPInstanceUID, dataset_bytes(bomb))
    after = vm_kib(node.proc.pid)
    growth_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
    print(f"RLE size bomb ({bomb.stat().st_size} byte file): growth {growth_mb:.1f} MB, "
          f"status 0x{code or 0:04X}")
    assert code == status.CANNOT_UNDERSTAND
    assert growth_mb <= 64
    rejected = [e for e in node.audit_events() if e["event"] == "instance.rejected"]
    assert len(rejected) == 2 and all("storage.max_instance_bytes" in e["reason"] for e in rejected)
    assert not list((node.root / "var" / "spool" / "instances").rglob("*.dcm"))
