"""The acceptor's wire format: DICOM upper-layer PDUs (PS3.8 9.3) and DIMSE command sets (PS3.7 6.3, 9.3).

Only what a Storage/Verification SCP needs, written for the per-message hot path: P-DATA-TF bodies
are walked in place with memoryviews (no copy of data set fragments), and a C-STORE response is a
few bytes built directly. Everything here parses untrusted bytes: any inconsistency raises
`PDUError`, which the connection answers with A-ABORT; nothing here allocates more than the input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from edge_ai import __version__

# PDU types
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "2.25.324960470688803032220875947103982912993"  # edge_ai, UUID-derived
IMPLEMENTATION_VERSION = f"EDGE_AI_{__version__}"[:16]

# A-ASSOCIATE-AC presentation context results (PS3.8 9.3.3.2)
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4

# DIMSE command fields (PS3.7 E.1)
C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ = 0x0001, 0x0030, 0x0FFF
RESPONSE_BIT = 0x8000
NO_DATA_SET = 0x0101
UNRECOGNIZED_OPERATION = 0x0211

RELEASE_RP_PDU = bytes([RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0])


class PDUError(ValueError):
    """Bytes that are not what PS3.8 allows at this point: answered with A-ABORT."""


@dataclass
class AssociateRQ:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str = ""
    # presentation context ID -> (abstract syntax, [transfer syntaxes]) in the requestor's order
    contexts: dict[int, tuple[str, list[str]]] = field(default_factory=dict)
    max_pdu_length: int = 0  # what the requestor can receive; 0 = no limit
    implementation_class_uid: str = ""
    implementation_version: str = ""


def _text(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("ascii", "replace").strip(" \x00")


def _items(body: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
    """(type, value) of each item: type (1), reserved (1), length (2, big endian), value."""
    pos, end = start, len(body)
    while pos < end:
        if end - pos < 4:
            raise PDUError("truncated item header")
        kind, length = body[pos], int.from_bytes(body[pos + 2:pos + 4], "big")
        if pos + 4 + length > end:
            raise PDUError(f"item 0x{kind:02X} runs past its PDU")
        yield kind, body[pos + 4:pos + 4 + length]
        pos += 4 + length


def parse_associate_rq(body: bytes | bytearray | memoryview) -> AssociateRQ:
    """The body of an A-ASSOCIATE-RQ (after its 6-byte header).

    Raises:
        PDUError: a malformed request.
    """
    view = memoryview(body)
    if len(view) < 68:
        raise PDUError("A-ASSOCIATE-RQ shorter than its fixed fields")
    rq = AssociateRQ(
        protocol_version=int.from_bytes(view[0:2], "big"),
        called_ae=_text(view[4:20]),
        calling_ae=_text(view[20:36]),
    )
    for kind, value in _items(view, 68):
        if kind == 0x10:
            rq.application_context = _text(value)
        elif kind == 0x20:
            if len(value) < 4:
                raise PDUError("presentation context item too short")
            ident = value[0]
            abstract, transfers = "", []
            for sub, sub_value in _items(value, 4):
                if sub == 0x30:
                    abstract = _text(sub_value)
                elif sub == 0x40:
                    transfers.append(_text(sub_value))
            if ident % 2 == 0 or ident in rq.contexts:
                raise PDUError(f"presentation context ID {ident} is even or repeated")
            rq.contexts[ident] = (abstract, transfers)
        elif kind == 0x50:
            for sub, sub_value in _items(value, 0):
                if sub == 0x51 and len(sub_value) == 4:
                    rq.max_pdu_length = int.from_bytes(sub_value, "big")
                elif sub == 0x52:
                    rq.implementation_class_uid = _text(sub_value)
                elif sub == 0x55:
                    rq.implementation_version = _text(sub_value)
                # asynchronous operations (0x53), role selection (0x54), extended negotiation (0x56, 0x57)
                # and user identity (0x58) are not negotiated: leaving them out of the answer declines them
    return rq


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def encode_associate_ac(rq: AssociateRQ, results: dict[int, tuple[int, str]], max_pdu_length: int) -> bytes:
    """A-ASSOCIATE-AC answering `rq`: per context ID (result, transfer syntax), our receive limit."""
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for ident, (result, transfer) in results.items():
        items.append(_item(0x21, bytes([ident, 0, result, 0]) + _item(0x40, transfer.encode())))
    user = (_item(0x51, struct.pack(">I", max_pdu_length))
            + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
            + _item(0x55, IMPLEMENTATION_VERSION.encode()))
    items.append(_item(0x50, user))
    body = struct.pack(">HH", 1, 0) + _ae(rq.called_ae) + _ae(rq.calling_ae) + bytes(32) + b"".join(items)
    return struct.pack(">BBI", ASSOCIATE_AC, 0, len(body)) + body


def encode_associate_rj(result: int, source: int, diagnostic: int) -> bytes:
    return bytes([ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0, result, source, diagnostic])


def encode_abort(source: int = 0x02, reason: int = 0x00) -> bytes:
    """A-ABORT; source 2 = service provider; reason 0 = not specified, 2 = unexpected PDU,
    6 = invalid PDU parameter value."""
    return bytes([ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason])


def iter_pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(context ID, message control header, fragment) of each PDV item in a P-DATA-TF body."""
    pos, end = 0, len(body)
    if end == 0:
        raise PDUError("P-DATA-TF without a PDV")
    while pos < end:
        if end - pos < 6:
            raise PDUError("truncated PDV item")
        length = int.from_bytes(body[pos:pos + 4], "big")
        if length < 2 or pos + 4 + length > end:
            raise PDUError("PDV item length does not fit its PDU")
        yield body[pos + 4], body[pos + 5], body[pos + 6:pos + 4 + length]
        pos += 4 + length


def encode_pdata(context_id: int, command: bytes, max_length: int = 0) -> bytes:
    """P-DATA-TF PDUs carrying a whole command set, split so that no PDU's variable field exceeds the
    peer's `max_length` (0: no limit; responses are a few hundred bytes, so almost always one PDU)."""
    room = len(command) if max_length <= 6 else max_length - 6  # a PDV item has 6 bytes of header
    chunks = [command[i:i + room] for i in range(0, len(command), room)] or [b""]
    out = []
    for n, chunk in enumerate(chunks):
        control = 0x03 if n == len(chunks) - 1 else 0x01
        pdv = struct.pack(">IBB", len(chunk) + 2, context_id, control)
        out.append(struct.pack(">BBI", P_DATA_TF, 0, len(pdv) + len(chunk)) + pdv + chunk)
    return b"".join(out)


# ---- DIMSE command sets: implicit VR little endian, group 0000 ---------------------------------------
_US_TAGS = frozenset({0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1031})


@dataclass
class Command:
    command_field: int = -1
    message_id: int = 0
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    data_set_type: int = NO_DATA_SET
    priority: int = 0

    @property
    def has_data_set(self) -> bool:
        return self.data_set_type != NO_DATA_SET


def decode_command(raw: bytes | bytearray) -> Command:
    """The elements of a command set the SCP acts on.

    Raises:
        PDUError: not a command set (elements outside group 0000, lengths past the end).
    """
    cmd = Command()
    view = memoryview(raw)
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < 8:
            raise PDUError("truncated command element")
        group, elem, length = struct.unpack_from("<HHI", view, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise PDUError("command set element outside group 0000 or past the end")
        value = view[pos:pos + length]
        pos += length
        if elem in _US_TAGS:
            if length != 2:
                raise PDUError(f"(0000,{elem:04X}) is US and must be 2 bytes")
            number = int.from_bytes(value, "little")
            if elem == 0x0100:
                cmd.command_field = number
            elif elem == 0x0110:
                cmd.message_id = number
            elif elem == 0x0700:
                cmd.priority = number
            elif elem == 0x0800:
                cmd.data_set_type = number
        elif elem == 0x0002:
            cmd.sop_class_uid = _uid(value)
        elif elem == 0x1000:
            cmd.sop_instance_uid = _uid(value)
    if cmd.command_field < 0:
        raise PDUError("command set without (0000,0100) Command Field")
    return cmd


def _uid(value: memoryview) -> str:
    return bytes(value).rstrip(b"\x00 ").decode("ascii", "replace")


def _element(elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if elem in (0x0002, 0x1000) else b" "
    return struct.pack("<HHI", 0, elem, len(value)) + value


def encode_response(request: Command, status: int, comment: str = "", affected_sop_class: str = "") -> bytes:
    """The response command set to `request`: C-STORE-RSP, C-ECHO-RSP or another's with `status`."""
    us = struct.Struct("<H").pack
    parts = [_element(0x0002, (affected_sop_class or request.sop_class_uid).encode("ascii", "replace")[:64]),
             _element(0x0100, us(request.command_field | RESPONSE_BIT)),
             _element(0x0120, us(request.message_id)),
             _element(0x0800, us(NO_DATA_SET)),
             _element(0x0900, us(status))]
    if comment:
        parts.append(_element(0x0902, comment.encode("ascii", "replace")[:64]))  # Error Comment, LO
    if request.command_field == C_STORE_RQ:
        parts.append(_element(0x1000, request.sop_instance_uid.encode("ascii", "replace")[:64]))
    body = b"".join(parts)
    return _element(0x0000, struct.pack("<I", len(body))) + body


# ---- Part 10 file meta ------------------------------------------------------------------------------
def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, 'DICM' and the File Meta Information group (explicit VR little endian) for a received
    data set, so that what the spool keeps is a Part-10 file whose data set is the bytes received."""

    def element(elem: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
        if len(value) % 2:
            value += pad
        if vr == b"OB":
            return struct.pack("<HH2sHI", 2, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value

    group = b"".join([
        element(0x0001, b"OB", b"\x00\x01", b""),
        element(0x0002, b"UI", sop_class_uid.encode("ascii", "replace")[:64], b"\x00"),
        element(0x0003, b"UI", sop_instance_uid.encode("ascii", "replace")[:64], b"\x00"),
        element(0x0010, b"UI", transfer_syntax.encode("ascii", "replace")[:64], b"\x00"),
        element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode(), b"\x00"),
        element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode(), b" "),
        element(0x0016, b"AE", source_ae.encode("ascii", "replace")[:16], b" "),
    ])
    return bytes(128) + b"DICM" + element(0x0000, b"UL", struct.pack("<I", len(group)), b"") + group
