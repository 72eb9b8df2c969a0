"""The node's own DICOM acceptor against peers that do what modalities and broken peers do: failure
reasons a modality can read, operations it does not offer, protocol errors, and a large instance
streamed to disk with flat memory."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import needs_dcmtk
from peers import associate_rq, dataset_bytes, echo_ok, recv_pdu, reset_peak_rss, storescu, vm_kib, wait_for
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edge_ai import phantoms
from edge_ai.dicom import contexts, pdu, status
from edge_ai.spool.ingest import dataset_offset

pytestmark = [pytest.mark.integration, needs_dcmtk]
DX = contexts.DX_PRESENTATION
MB = 1024 * 1024


def _recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    raw = recv_pdu(sock)
    return (raw[0], raw[6:]) if len(raw) >= 6 else (0, b"")


def _command(*elements: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HHI", 0, tag, len(v)) + v for tag, v in elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _associated(port: int, sop_class: str = DX) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq(sop_class=sop_class))
    kind, _ = _recv_pdu(sock)
    assert kind == pdu.ASSOCIATE_AC
    return sock


def _response_status(body: bytes) -> tuple[int, int]:
    """(command field, status) of the response command set in a P-DATA-TF body."""
    ((_, control, fragment),) = list(pdu.iter_pdvs(memoryview(body)))
    assert control == 0x03
    raw = bytes(fragment)
    fields, pos = {}, 0
    while pos < len(raw):
        _, elem, length = struct.unpack_from("<HHI", raw, pos)
        fields[elem] = raw[pos + 8:pos + 8 + length]
        pos += 8 + length
    return int.from_bytes(fields[0x0100], "little"), int.from_bytes(fields[0x0900], "little")


def test_failure_status_carries_the_reason_for_the_modality(node_factory: Any) -> None:
    """A refused instance's C-STORE response says why in Error Comment (what a modality shows its user)."""
    from pynetdicom import AE

    node = node_factory().start()
    ds, _ = phantoms.dx_case(np.random.default_rng(1), size=64)
    ds.StudyInstanceUID = "1.2.3/../4"  # lenient UIDs are stored; one that could steer a path is not
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(DX)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGE_AI")
    assert assoc.is_established
    rsp = assoc.send_c_store(ds)
    assoc.release()
    assert rsp.Status == status.CANNOT_UNDERSTAND
    assert "StudyInstanceUID" in str(rsp.ErrorComment)


def test_an_operation_not_offered_is_answered_0211_and_the_association_goes_on(node_factory: Any) -> None:
    """A C-FIND-RQ on a storage context gets 'unrecognised operation'; a C-ECHO after it still succeeds."""
    node = node_factory().start()
    sock = _associated(node.port)
    find = _command((0x0002, DX.encode()), (0x0100, b"\x20\x00"), (0x0110, b"\x07\x00"),
                    (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"))
    sock.sendall(pdu.encode_pdata(1, find))
    identifier = bytes(8)  # the query's data set: drained, not read
    item = struct.pack(">IBB", len(identifier) + 2, 1, 0x02) + identifier
    sock.sendall(struct.pack(">BBI", pdu.P_DATA_TF, 0, len(item)) + item)
    kind, body = _recv_pdu(sock)
    assert kind == pdu.P_DATA_TF and _response_status(body) == (0x8020, 0x0211)
    echo = _command((0x0002, b"1.2.840.10008.1.1\x00"), (0x0100, b"\x30\x00"), (0x0110, b"\x08\x00"),
                    (0x0800, b"\x01\x01"))
    sock.sendall(pdu.encode_pdata(1, echo))
    kind, body = _recv_pdu(sock)
    assert kind == pdu.P_DATA_TF and _response_status(body) == (0x8030, status.SUCCESS)
    sock.sendall(bytes([pdu.RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    assert _recv_pdu(sock)[0] == pdu.RELEASE_RP
    sock.close()


def test_data_on_a_context_never_accepted_is_aborted_and_audited(node_factory: Any) -> None:
    """A PDV on a presentation context the node did not accept ends the association with A-ABORT;
    the audit says why, and the node goes on serving."""
    node = node_factory().start()
    sock = _associated(node.port)
    sock.sendall(pdu.encode_pdata(3, _command((0x0100, b"\x30\x00"), (0x0800, b"\x01\x01"))))
    kind, _ = _recv_pdu(sock)
    sock.close()
    assert kind == pdu.ABORT
    assert wait_for(lambda: [e for e in node.audit_events() if e["event"] == "association.aborted"
                             and "presentation context 3" in e.get("reason", "")], 5)
    assert echo_ok(node.port)


def test_a_large_instance_streams_to_disk_with_flat_memory(node_factory: Any, tmp_path: Path) -> None:
    """A 120 MB instance is stored byte for byte while the node's peak RSS grows by far less than its size
    (the data set is written to the spool as it arrives, never held whole). Secondary Capture, so no
    model decodes it afterwards."""
    node = node_factory().start()
    ds = Dataset()
    ds.SOPClassUID = contexts.SECONDARY_CAPTURE
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 7746, 7746
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(5).integers(0, 4096, (7746, 7746), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    big = tmp_path / "big.dcm"
    ds.save_as(big, enforce_file_format=True)
    del ds
    assert node.proc is not None
    reset_peak_rss(node.proc.pid)
    before = vm_kib(node.proc.pid)
    out = storescu(node.port, [big], extra=("--max-pdu", "131072"))
    assert out.returncode == 0, out.stderr
    after = vm_kib(node.proc.pid)
    growth_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
    size_mb = big.stat().st_size / MB
    print(f"{size_mb:.0f} MB instance: node RSS {before['VmRSS'] / 1024:.0f} MB -> peak "
          f"{after['VmHWM'] / 1024:.0f} MB (growth {growth_mb:.1f} MB)")
    assert growth_mb < 32
    stored = list((node.root / "var" / "spool" / "instances").rglob("*.dcm"))
    assert len(stored) == 1
    kept = stored[0].read_bytes()
    assert kept[dataset_offset(kept):] == dataset_bytes(big), "the data set is kept exactly as sent"


def _trickle(sock: socket.socket, seconds: float) -> float:
    """Send one byte a second until the node closes the connection; returns how long that took."""
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            sock.sendall(b"\x00")
            time.sleep(1.0)
            sock.setblocking(False)
            try:
                if sock.recv(65536) == b"":
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    except OSError:
        pass
    return time.monotonic() - start


@pytest.mark.parametrize("where", ["association request", "P-DATA inside an association"])
def test_a_peer_trickling_one_byte_a_second_is_dropped_on_the_pdu_deadline(node_factory: Any, where: str) -> None:
    """Each byte arrives within the socket timeout, but the PDU must be whole within timeouts.acse (the
    request, ARTIM) or timeouts.dimse (any later PDU): the peer is dropped then, audited, and its slot
    freed for the modality that comes next."""
    node = node_factory(extra={"node": {"max_associations": 1,
                                        "timeouts": {"acse": 3, "dimse": 3, "socket": 2}}}).start()
    if where == "association request":
        sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        sock.sendall(struct.pack(">BBL", pdu.ASSOCIATE_RQ, 0, 60000) + b"\x00\x01\x00\x00")
        key = "node.timeouts.acse"
    else:
        sock = _associated(node.port)
        sock.sendall(struct.pack(">BBL", pdu.P_DATA_TF, 0, 16000) + b"\x00\x00")
        key = "node.timeouts.dimse"
    took = _trickle(sock, 20)
    sock.close()
    assert took <= 3 + 2 + 1.5, f"dropped after {took:.1f} s"
    assert wait_for(lambda: [e for e in node.audit_events() if e["event"] == "association.dropped"
                             and key in e.get("reason", "")], 5), node.audit_events()
    assert echo_ok(node.port), "the single slot is free again"
