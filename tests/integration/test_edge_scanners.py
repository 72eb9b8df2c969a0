"""What real senders do that the node must take (issue: every scanner, every delivery pattern): one
instance per association, a study mixing analysed and other objects, lenient UIDs, a data set cut short,
a big association request, C-ECHO quirks, transfer syntax preference, association ids across restarts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import needs_dcmtk
from peers import dataset_bytes, raw_c_store, recv_pdu, storescu, wait_for
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from edge_ai import phantoms
from edge_ai.dicom import contexts, pdu, status

pytestmark = [pytest.mark.integration, needs_dcmtk]


def _ct_files(folder: Path, slices: int = 8, seed: int = 3, **uids: str) -> list[Path]:
    datasets, _ = phantoms.ct_case(np.random.default_rng(seed), slices=slices, size=64, lesion=False)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        for key, value in uids.items():
            setattr(ds, key, value if key != "SOPInstanceUID" else f"{value}.{i + 1}")
        if "SOPInstanceUID" in uids:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:03d}.dcm"
        phantoms.write_dataset(ds, path)
        paths.append(path)
    return paths


def _srs(node: Any) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(node.results.rglob("*.dcm"))] if node.results.exists() else []


def _referenced(sr: pydicom.Dataset) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}


def test_one_instance_per_association_gives_one_sr_covering_every_slice(node_factory: Any, tmp_path: Path) -> None:
    """A CT sent as one storescu run per slice (many routers do) gets exactly one SR, made only after the
    last slice, referencing every slice; none from a partial series."""
    node = node_factory().start()
    files = _ct_files(tmp_path / "ct", slices=10)
    for path in files:
        out = storescu(node.port, [path])
        assert out.returncode == 0, out.stderr
        assert _srs(node) == [], "an SR was made while the series was still arriving"
    last = time.monotonic()
    srs = wait_for(lambda: _srs(node), 30)
    took = time.monotonic() - last
    time.sleep(1.0)  # nothing more comes
    srs = _srs(node)
    assert len(srs) == 1, [s.SOPInstanceUID for s in srs]
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert _referenced(srs[0]) == sent
    print(f"one instance per association: SR {took:.2f} s after the last slice (quiet window 2 s)")


def _other_object(folder: Path, sop_class: str, modality: str, study: str) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = modality, "PHANTOM", "Phantom^Mixed"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{modality}-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_mixed_study_is_stored_whole_and_only_the_ct_is_analysed(node_factory: Any, tmp_path: Path) -> None:
    """MR, RT Plan, a dose report and a presentation state in the middle of a CT study no longer stop
    storescu: every object gets Success, and the CT series gets exactly one SR."""
    node = node_factory().start()
    files = _ct_files(tmp_path / "ct", slices=6)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    others = [_other_object(tmp_path, uid, modality, study) for uid, modality in (
        (contexts.MR_IMAGE, "MR"), ("1.2.840.10008.5.1.4.1.1.481.5", "RTPLAN"),
        ("1.2.840.10008.5.1.4.1.1.88.67", "SR"), ("1.2.840.10008.5.1.4.1.1.11.1", "PR"))]
    mixed = files[:3] + others + files[3:]
    out = storescu(node.port, mixed)
    assert out.returncode == 0, out.stderr
    stored = wait_for(lambda: [e for e in node.audit_events() if e["event"] == "instance.stored"]
                      if len([e for e in node.audit_events() if e["event"] == "instance.stored"]) == len(mixed)
                      else None, 20)
    assert stored and all(e["status"] == 0 for e in stored)
    srs = wait_for(lambda: _srs(node), 30)
    time.sleep(1.0)
    assert len(_srs(node)) == 1 and len(srs[0].CurrentRequestedProcedureEvidenceSequence) == 1
    not_analysed = wait_for(lambda: [e for e in node.audit_events() if e["event"] == "series.not_analysed"], 10)
    assert len(not_analysed) == 4


def test_lenient_uids_are_stored_and_analysed_and_never_become_a_path(node_factory: Any, tmp_path: Path) -> None:
    """A series whose UIDs have a leading-zero component (storescp, pynetdicom and Orthanc store them) is
    stored and reported; its study UID does not appear as a folder name."""
    node = node_factory().start()
    study, series = "1.2.826.0.1.3680043.8.498.012", "1.2.826.0.1.3680043.8.498.012.01"
    files = _ct_files(tmp_path / "ct", slices=4, StudyInstanceUID=study, SeriesInstanceUID=series,
                      SOPInstanceUID="1.2.826.0.1.3680043.8.498.012.01.07")
    out = storescu(node.port, files)
    assert out.returncode == 0, out.stderr
    srs = wait_for(lambda: _srs(node), 30)
    assert srs and str(srs[0].StudyInstanceUID) == study
    assert len(_referenced(srs[0])) == 4
    paths = [str(p) for p in (node.root / "var").rglob("*")]
    assert not [p for p in paths if study in p], "a peer's lenient UID became part of a path"


def test_a_data_set_cut_short_is_refused_naming_the_element(node_factory: Any, tmp_path: Path) -> None:
    """A data set whose pixel data is 2 bytes short gets 0xC000 (never Success), and the audit says which
    element; nothing is kept and the node goes on."""
    node = node_factory().start()
    (path,) = _ct_files(tmp_path / "ct", slices=1)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    data = dataset_bytes(path)
    code = raw_c_store(node.port, contexts.CT_IMAGE, str(ds.file_meta.TransferSyntaxUID), contexts.CT_IMAGE,
                       str(ds.SOPInstanceUID), data[:-2])
    assert code == status.CANNOT_UNDERSTAND
    rejected = wait_for(lambda: [e for e in node.audit_events() if e["event"] == "instance.rejected"], 5)
    assert "(7FE0,0010) PixelData cut short" in rejected[0]["reason"]
    assert not list((node.root / "var" / "spool" / "instances").rglob("*.dcm"))
    assert raw_c_store(node.port, contexts.CT_IMAGE, str(ds.file_meta.TransferSyntaxUID), contexts.CT_IMAGE,
                       str(ds.SOPInstanceUID), data) == status.SUCCESS


def test_transfer_syntax_is_the_nodes_choice_not_the_callers_order(node_factory: Any) -> None:
    """JPEG baseline proposed before explicit VR little endian: the node accepts explicit VR little endian
    (no lossy copy when a lossless one is on offer); JPEG alone is still accepted."""
    from pynetdicom import AE

    node = node_factory().start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(contexts.CT_IMAGE, [JPEGBaseline8Bit, ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    ae.add_requested_context(contexts.DX_PRESENTATION, [JPEGBaseline8Bit])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGE_AI")
    try:
        assert assoc.is_established
        chosen = {cx.abstract_syntax: cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert chosen == {contexts.CT_IMAGE: ExplicitVRLittleEndian, contexts.DX_PRESENTATION: JPEGBaseline8Bit}


def test_a_big_association_request_with_a_user_identity_token_is_accepted(node_factory: Any) -> None:
    """120 contexts, each proposing every transfer syntax DICOM defines, and a 60 KB user identity token (a
    SAML assertion; the user information item cannot exceed 64 KiB) make an A-ASSOCIATE-RQ of ~200 KB:
    accepted, not aborted."""
    from pydicom._uid_dict import UID_dictionary
    from pynetdicom import AE
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    node = node_factory().start()
    ae = AE(ae_title="MODALITY")
    every_syntax = [str(uid) for uid, info in UID_dictionary.items() if info[1] == "Transfer Syntax"]
    for uid in list(contexts.STORAGE_CLASSES)[:120]:
        ae.add_requested_context(uid, every_syntax)
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 5  # SAML assertion
    identity.primary_field = b"<saml>" + b"x" * 60000 + b"</saml>"
    assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGE_AI", ext_neg=[identity])
    try:
        assert assoc.is_established
        assert len(assoc.accepted_contexts) == 120
    finally:
        assoc.release()


def _two_context_rq() -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification (context 1) and CT Image Storage (context 3)."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "MODALITY", "EDGE_AI"
    contexts_ = [build_context("1.2.840.10008.1.1"), build_context(contexts.CT_IMAGE, [ExplicitVRLittleEndian])]
    for n, cx in enumerate(contexts_):
        cx.context_id = 2 * n + 1
    primitive.presentation_context_definition_list = contexts_
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return bytes(rq.encode())


def _command(context: int, *elements: tuple[int, bytes]) -> bytes:
    import struct

    body = b"".join(struct.pack("<HHI", 0, tag, len(v)) + v for tag, v in elements)
    return pdu.encode_pdata(context, struct.pack("<HHII", 0, 0, 4, len(body)) + body)


def _echo(message_id: int, data_set_type: bytes) -> bytes:
    return _command(1, (0x0002, b"1.2.840.10008.1.1\x00"), (0x0100, b"\x30\x00"),
                    (0x0110, message_id.to_bytes(2, "little")), (0x0800, data_set_type))


@pytest.mark.parametrize("then", ["release", "another echo", "the announced data set", "a C-STORE on another context"])
def test_a_c_echo_announcing_a_data_set_is_answered_at_once(node_factory: Any, tmp_path: Path, then: str) -> None:
    """A C-ECHO-RQ whose Command Data Set Type says a data set follows gets its Success at once (not after
    the DIMSE timeout), and whatever the peer does next (release, another message, even the data set it
    announced) goes on normally: no A-ABORT."""
    import socket
    import struct

    node = node_factory(extra={"node": {"timeouts": {"dimse": 20}}}).start()
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    sock.sendall(_two_context_rq())
    assert recv_pdu(sock)[0] == pdu.ASSOCIATE_AC
    started = time.monotonic()
    sock.sendall(_echo(5, b"\x00\x00"))  # 0x0000: "a data set follows"
    assert recv_pdu(sock)[0] == pdu.P_DATA_TF and time.monotonic() - started < 2
    if then == "another echo":
        sock.sendall(_echo(6, b"\x01\x01"))
        assert recv_pdu(sock)[0] == pdu.P_DATA_TF
    elif then == "the announced data set":
        item = struct.pack(">IBB", 10, 1, 0x02) + bytes(8)
        sock.sendall(struct.pack(">BBI", pdu.P_DATA_TF, 0, len(item)) + item)  # dropped, no answer owed
        sock.sendall(_echo(7, b"\x01\x01"))
        assert recv_pdu(sock)[0] == pdu.P_DATA_TF
    elif then == "a C-STORE on another context":
        (path,) = _ct_files(tmp_path / "ct", slices=1)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID).encode()
        uid += b"\x00" * (len(uid) % 2)
        sock.sendall(_command(3, (0x0002, contexts.CT_IMAGE.encode() + b"\x00"), (0x0100, b"\x01\x00"),
                              (0x0110, b"\x08\x00"), (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"),
                              (0x1000, uid)))
        data = dataset_bytes(path)
        item = struct.pack(">IBB", len(data) + 2, 3, 0x02) + data
        sock.sendall(struct.pack(">BBI", pdu.P_DATA_TF, 0, len(item)) + item)
        answer = recv_pdu(sock)
        assert answer[0] == pdu.P_DATA_TF
        assert b"\x00\x09\x02\x00\x00\x00\x00\x00" in answer, "C-STORE answered Success"
    sock.sendall(bytes([pdu.RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    assert recv_pdu(sock)[0] == pdu.RELEASE_RP
    sock.close()
    assert not [e for e in node.audit_events() if e["event"] == "association.aborted"]


def test_association_ids_are_unique_across_restarts(node_factory: Any, tmp_path: Path) -> None:
    """Two runs of the node never give two associations the same id (grouping and the audit rely on it)."""
    node = node_factory().start()
    files = _ct_files(tmp_path / "ct", slices=2)
    assert storescu(node.port, files[:1]).returncode == 0
    node.stop()
    node.start()
    assert storescu(node.port, files[1:]).returncode == 0
    ids = wait_for(lambda: [e["association"] for e in node.audit_events() if e["event"] == "association.accepted"]
                   if len([e for e in node.audit_events() if e["event"] == "association.accepted"]) == 2 else None,
                   10)
    assert ids and len(set(ids)) == 2
