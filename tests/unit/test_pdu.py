"""edge_ai.dicom.pdu against an independent implementation: what the node encodes, pynetdicom and pydicom
decode to the intended values; what pynetdicom encodes, the node parses."""

from __future__ import annotations

import io
import struct

from peers import associate_rq
from pydicom.filereader import dcmread, read_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC

from edge_ai.dicom import pdu

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_the_association_request_pynetdicom_builds_is_parsed() -> None:
    rq = pdu.parse_associate_rq(associate_rq(calling="CT_1", called="EDGE_AI", sop_class=CT)[6:])
    assert (rq.calling_ae, rq.called_ae, rq.protocol_version) == ("CT_1", "EDGE_AI", 1)
    assert rq.application_context == pdu.APPLICATION_CONTEXT and rq.max_pdu_length == 16384
    assert rq.contexts[1][0] == CT and "1.2.840.10008.1.2" in rq.contexts[1][1]


def test_the_association_accept_decodes_in_pynetdicom() -> None:
    """Context results, chosen transfer syntax, our maximum length and implementation identity."""
    rq = pdu.parse_associate_rq(associate_rq(calling="CT_1", sop_class=CT)[6:])
    raw = pdu.encode_associate_ac(rq, {1: (pdu.ACCEPTANCE, "1.2.840.10008.1.2"),
                                       3: (pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, "1.2.840.10008.1.2")}, 131072)
    ac = A_ASSOCIATE_AC()
    ac.decode(raw)
    primitive = ac.to_primitive()
    results = {cx.context_id: (cx.result, cx.transfer_syntax[0] if cx.transfer_syntax else None)
               for cx in primitive.presentation_context_definition_results_list}
    assert results[1] == (0, "1.2.840.10008.1.2") and results[3][0] == 3
    assert primitive.maximum_length_received == 131072
    assert primitive.implementation_class_uid == pdu.IMPLEMENTATION_CLASS_UID
    versions = [i.implementation_version_name for i in primitive.user_information
                if type(i).__name__ == "ImplementationVersionNameNotification"]
    assert versions == [pdu.IMPLEMENTATION_VERSION]
    assert primitive.application_context_name == pdu.APPLICATION_CONTEXT


def test_a_store_response_is_a_valid_command_set_split_to_the_peers_maximum() -> None:
    """Reassembled from PDUs no longer than a tiny peer maximum, the C-STORE-RSP reads back in pydicom."""
    request = pdu.Command(command_field=pdu.C_STORE_RQ, message_id=7, sop_class_uid=CT, sop_instance_uid="1.2.3")
    command = pdu.encode_response(request, 0xA700, "disk full")
    wire, fragments = pdu.encode_pdata(1, command, max_length=40), []
    pos = 0
    while pos < len(wire):
        kind, _, length = struct.unpack(">BBL", wire[pos:pos + 6])
        assert kind == pdu.P_DATA_TF and length <= 40
        fragments += list(pdu.iter_pdvs(memoryview(wire[pos + 6:pos + 6 + length])))
        pos += 6 + length
    assert [control for _, control, _ in fragments][-1] == 0x03
    assert all(control == 0x01 for _, control, _ in fragments[:-1])
    ds = read_dataset(io.BytesIO(b"".join(bytes(f) for _, _, f in fragments)), is_implicit_VR=True,
                      is_little_endian=True)
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8001, 7, 0xA700)
    assert (ds.AffectedSOPClassUID, ds.AffectedSOPInstanceUID, ds.ErrorComment) == (CT, "1.2.3", "disk full")
    assert ds.CommandGroupLength == len(command) - 12


def test_file_meta_reads_back_in_pydicom() -> None:
    meta = pdu.file_meta(CT, "1.2.3.4", "1.2.840.10008.1.2.1", "CT_1")
    ds = dcmread(io.BytesIO(meta + b""), force=True)
    fm = ds.file_meta
    assert (fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID, fm.TransferSyntaxUID) == (
        CT, "1.2.3.4", "1.2.840.10008.1.2.1")
    assert fm.ImplementationClassUID == pdu.IMPLEMENTATION_CLASS_UID and fm.SourceApplicationEntityTitle == "CT_1"
