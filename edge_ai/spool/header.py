"""The few header attributes ingest decides on, read straight from the received bytes.

Reading a CT slice's header with pydicom costs about as much as storing the slice; this reads the
identifying UIDs, the image geometry and what ordering and preprocessing need (instance number,
position, orientation, rescale, window, pixel module, where Pixel Data starts) from an
uncompressed-header data set (implicit or explicit VR little endian, which is every transfer syntax
the node accepts except deflate and big endian) in one pass over the top-level elements, skipping
sequences. Ingest keeps those values in the index (`image_record`), so the worker never parses the
header a second time. Anything it does not expect (deflate, tags out of
order, a value of an odd length or VR, an element running past the bytes it was given) makes it
return None, and the caller asks pydicom, whose answer is the reference: this is a fast path only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.datadict import dictionary_VR

EXPLICIT_LE_FAMILY = frozenset({
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
})
IMPLICIT_LE = "1.2.840.10008.1.2"

# tag -> (keyword, kind): kind "ui"/"cs" text, "us" unsigned short, "is" integer string, else a VR whose
# value is kept as its text, backslashes (several values) included, for the image record
WANTED: dict[int, tuple[str, str]] = {
    0x00080016: ("SOPClassUID", "ui"),
    0x00080018: ("SOPInstanceUID", "ui"),
    0x00080060: ("Modality", "cs"),
    0x00100020: ("PatientID", "lo"),
    0x00200013: ("InstanceNumber", "IS"),
    0x0020000D: ("StudyInstanceUID", "ui"),
    0x0020000E: ("SeriesInstanceUID", "ui"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00280002: ("SamplesPerPixel", "us"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "is"),
    0x00280010: ("Rows", "us"),
    0x00280011: ("Columns", "us"),
    0x00280100: ("BitsAllocated", "us"),
    0x00280101: ("BitsStored", "us"),
    0x00280102: ("HighBit", "us"),
    0x00280103: ("PixelRepresentation", "us"),
    0x00281050: ("WindowCenter", "DS"),
    0x00281051: ("WindowWidth", "DS"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
    0x00281054: ("RescaleType", "LO"),
}
# present: the image's LUT, VOI or frame handling reads more than WANTED; the worker reads its header
NEEDS_FULL_HEADER = frozenset({0x00283000, 0x00283010, 0x52009229, 0x52009230})
PIXEL_DATA = 0x7FE00010
PIXEL_AT = "_pixel_data_at"  # key of fast_header's result: offset of the Pixel Data element in `data`
FULL = "_needs_full_header"  # key of fast_header's result: NEEDS_FULL_HEADER had a member
_LAST = PIXEL_DATA
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_VRS = _LONG_VRS | {v.encode() for v in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT",
                                          "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US")}
_EXPECTED_VR = {"ui": b"UI", "cs": b"CS", "us": b"US", "is": b"IS", "lo": b"LO", "IS": b"IS", "DS": b"DS",
                "CS": b"CS", "LO": b"LO"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TAG = struct.Struct("<HH")
_MAX_DEPTH = 16


class _Unexpected(Exception):
    """Something the fast path does not read: the caller falls back to pydicom."""


def fast_header(data: bytes | bytearray | memoryview, transfer_syntax: str,
                complete: bool = True) -> dict[str, Any] | None:
    """The WANTED attributes present in `data` (a data set, no file meta), or None: ask pydicom.

    `complete` is False when `data` is only the start of the data set.
    """
    if transfer_syntax == IMPLICIT_LE:
        explicit = False
    elif transfer_syntax in EXPLICIT_LE_FAMILY:
        explicit = True
    else:
        return None
    view = memoryview(data)
    found: dict[str, Any] = {}
    try:
        pos, previous = 0, -1
        while pos < len(view):
            at = pos
            tag, vr, length, pos = _element_header(view, pos, explicit)
            if tag <= previous:
                return None
            previous = tag
            if tag >= _LAST:
                if tag == PIXEL_DATA:
                    found[PIXEL_AT] = at
                return found
            if tag in NEEDS_FULL_HEADER:
                found[FULL] = True
            if length == _UNDEFINED:
                if not _is_sequence(tag, vr):
                    return None  # UN, or an implicit-VR element not known as SQ: pydicom's business
                pos = _skip_undefined(view, pos, explicit, 0)
                continue
            if pos + length > len(view):
                return None
            wanted = WANTED.get(tag)
            if wanted is not None:
                keyword, kind = wanted
                if vr is not None and vr != _EXPECTED_VR[kind]:
                    return None
                found[keyword] = _value(view[pos:pos + length], kind)
            pos += length
    except (_Unexpected, struct.error, ValueError, UnicodeDecodeError):
        return None
    return found if complete else None


def meta_transfer_syntax(part10: bytes | bytearray | memoryview) -> str | None:
    """(0002,0010) from a Part-10 file's meta group (explicit VR little endian), or None."""
    view = memoryview(part10)
    if bytes(view[128:132]) != b"DICM":
        return None
    end = 144 + int.from_bytes(view[140:144], "little")
    pos = 132
    try:
        while pos < min(end, len(view)):
            tag, _, length, pos = _element_header(view, pos, True)
            if tag == 0x00020010:
                return bytes(view[pos:pos + length]).decode("ascii").rstrip(" \x00")
            if length == _UNDEFINED:
                return None
            pos += length
    except (_Unexpected, UnicodeDecodeError):
        return None
    return None


def _element_header(view: memoryview, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, position of the value)."""
    if pos + 8 > len(view):
        raise _Unexpected
    group, elem = _TAG.unpack_from(view, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item and delimitation tags have no VR even in explicit VR
        return tag, None, int.from_bytes(view[pos + 4:pos + 8], "little"), pos + 8
    if not explicit:
        return tag, None, int.from_bytes(view[pos + 4:pos + 8], "little"), pos + 8
    vr = bytes(view[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        if pos + 12 > len(view):
            raise _Unexpected
        return tag, vr, int.from_bytes(view[pos + 8:pos + 12], "little"), pos + 12
    if vr not in _VRS:
        raise _Unexpected
    return tag, vr, int.from_bytes(view[pos + 6:pos + 8], "little"), pos + 8


def _skip_undefined(view: memoryview, pos: int, explicit: bool, depth: int) -> int:
    """Past an undefined-length sequence (its items, then the sequence delimiter)."""
    if depth > _MAX_DEPTH:
        raise _Unexpected
    while True:
        tag, _, length, pos = _element_header(view, pos, explicit)
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unexpected
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements until the item delimiter
            tag, vr, length, pos = _element_header(view, pos, explicit)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                if not _is_sequence(tag, vr):
                    raise _Unexpected
                pos = _skip_undefined(view, pos, explicit, depth + 1)
            else:
                pos += length
        if pos > len(view):
            raise _Unexpected


def _is_sequence(tag: int, vr: bytes | None) -> bool:
    """Whether an undefined-length element is a sequence as pydicom reads it: explicit VR SQ, or in
    implicit VR a tag the dictionary knows as SQ (anything else pydicom reads differently)."""
    if vr is not None:
        return vr == b"SQ"
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def _value(raw: memoryview, kind: str) -> Any:
    if kind.isupper():  # kept as text for the image record: pydicom converts it as it would from the file
        text = bytes(raw).decode("ascii").rstrip(" \x00")
        if any(part[:1].isspace() for part in text.split("\\")):
            raise _Unexpected
        return text
    if kind == "us":
        if len(raw) != 2:
            raise _Unexpected  # a multi-valued or odd US: pydicom decides what that means
        return int.from_bytes(raw, "little")
    text = bytes(raw).decode("ascii").rstrip(" \x00")
    if "\\" in text or text[:1].isspace():
        raise _Unexpected
    if kind == "is":
        if not text.isdigit():
            raise _Unexpected
        return int(text)
    return text


# ---- completeness: every element's value is there -------------------------------------------------
_WINDOW = 65536
_MAX_HEADERS = 100_000  # a data set needing more header reads than this is not judged (bounded CPU per store)
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


class _Reader:
    """Random reads of a data set (bytes in memory, or a file read through a window)."""

    def __init__(self, source: bytes | memoryview | BinaryIO, start: int, end: int) -> None:
        self.source, self.start, self.end = source, start, end
        self._at, self._buf = -1, b""
        self.headers = 0  # element headers read: a walk stops judging past _MAX_HEADERS

    def zeros_from(self, pos: int) -> bool:
        """Whether every byte from `pos` to the end is zero (padding some writers leave, not a cut)."""
        size = self.end - self.start
        while pos < size:
            chunk = self.read(pos, _WINDOW)
            if chunk.strip(b"\x00"):
                return False
            pos += len(chunk)
        return True

    def read(self, pos: int, n: int) -> bytes:
        n = max(0, min(n, self.end - self.start - pos))  # never past the data set's end
        if not isinstance(self.source, (bytes, memoryview)):
            if pos < self._at or pos + n > self._at + len(self._buf):
                self.source.seek(self.start + pos)
                self._at, self._buf = pos, self.source.read(max(n, _WINDOW))
            return bytes(self._buf[pos - self._at:pos - self._at + n])
        return bytes(self.source[self.start + pos:self.start + pos + n])


def cut_short(source: bytes | memoryview | BinaryIO, start: int, end: int, transfer_syntax: str) -> str | None:
    """Why the data set in `source[start:end]` is cut short (an element declaring more bytes than follow,
    or a header broken off at the end), naming the element; None when it is whole (or cannot be
    judged: deflated, nested deeper than any real data set). Only headers are read: values are skipped."""
    if transfer_syntax == "1.2.840.10008.1.2.1.99":
        return None  # deflated: the inflate check refuses a cut-off stream
    explicit = transfer_syntax != IMPLICIT_LE
    order = ">" if transfer_syntax == _BIG_ENDIAN else "<"
    reader = _Reader(source, start, end)
    try:
        _walk(reader, 0, end - start, explicit, order, 0, None)
    except _Cut as cut:
        # a few zero bytes after the last element are padding some writers leave, not a cut
        padding = end - start - cut.pos < 8 and reader.zeros_from(cut.pos)
        return None if padding else str(cut)
    except _Unexpected:
        return None
    return None


class _Cut(Exception):
    """The data set ends before what the element at top-level position `pos` (or inside it) declares."""

    def __init__(self, reason: str, pos: int) -> None:
        super().__init__(reason)
        self.pos = pos


def _name(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag) or 'element'}"


def _walk(r: _Reader, pos: int, end: int, explicit: bool, order: str, depth: int, stop: int | None) -> int:
    """Element headers from `pos` to `end`, or up to the delimiter tag `stop`; returns where it ended."""
    if depth > _MAX_DEPTH:
        raise _Unexpected
    top = pos
    while pos < end:
        if depth == 0:
            top = pos
        r.headers += 1
        if r.headers > _MAX_HEADERS:
            raise _Unexpected
        head = r.read(pos, 8)
        if len(head) < 8:
            raise _Cut(f"data set ends inside an element header ({end - pos} bytes left)", top)
        group, elem = struct.unpack_from(order + "HH", head)
        tag = group << 16 | elem
        vr: bytes | None = None
        if group == 0xFFFE or not explicit:
            length, value = struct.unpack_from(order + "L", head, 4)[0], pos + 8
        elif head[4:6] not in _VRS:
            raise _Unexpected  # not a VR: implicit data under an explicit syntax, or garbage: pydicom's call
        elif head[4:6] in _LONG_VRS:
            vr = head[4:6]
            more = r.read(pos + 8, 4)
            if len(more) < 4:
                raise _Cut(f"data set ends inside the header of {_name(tag)}", top)
            length, value = struct.unpack_from(order + "L", more)[0], pos + 12
        else:
            vr = head[4:6]
            length, value = struct.unpack_from(order + "H", head, 6)[0], pos + 8
        if tag == stop:
            return value
        if length == _UNDEFINED:
            pos = _undefined(r, value, end, explicit, order, depth, tag, vr, top)
            continue
        if value + length > end:
            raise _Cut(f"{_name(tag)} cut short: {max(0, end - value)} of {length} bytes", top)
        pos = value + length
    if stop is not None:
        raise _Cut("data set ends inside a sequence or item of undefined length", top)
    return pos


def _undefined(r: _Reader, value: int, end: int, explicit: bool, order: str, depth: int, tag: int,
               vr: bytes | None, top: int) -> int:
    """Past an undefined-length element: a sequence or encapsulated pixel data, or UN, whose content is
    implicit VR little endian (PS3.5 6.2.2), or explicit where a writer got that wrong (pydicom reads both)."""
    try:
        if vr != b"UN":
            return _items(r, value, end, explicit, order, depth + 1, tag, top)
        try:
            return _items(r, value, end, False, "<", depth + 1, tag, top)
        except (_Cut, _Unexpected):
            return _items(r, value, end, True, "<", depth + 1, tag, top)
    except _Cut as cut:
        cut.pos = top
        raise


def _items(r: _Reader, pos: int, end: int, explicit: bool, order: str, depth: int, owner: int, top: int) -> int:
    """The items of an undefined-length element up to its sequence delimiter; returns the position after."""
    while True:
        r.headers += 1
        if r.headers > _MAX_HEADERS:
            raise _Unexpected
        head = r.read(pos, 8)
        if len(head) < 8:
            raise _Cut(f"{_name(owner)} cut short: no sequence delimiter", top)
        group, elem = struct.unpack_from(order + "HH", head)
        tag, length = group << 16 | elem, struct.unpack_from(order + "L", head, 4)[0]
        if tag == _SEQ_END:
            return pos + 8
        if tag != _ITEM:
            raise _Unexpected
        if length == _UNDEFINED:
            pos = _walk(r, pos + 8, end, explicit, order, depth + 1, _ITEM_END)
        elif pos + 8 + length > end:
            raise _Cut(f"{_name(owner)} cut short: an item of {length} bytes, {max(0, end - pos - 8)} left", top)
        else:
            pos += 8 + length


# ---- the image record: what ordering and preprocessing need, kept in the index ---------------------
@dataclass(frozen=True)
class ImageRecord:
    """The WANTED attributes of one instance as `fast_header` read them (text as stored, US as int),
    its transfer syntax and the file offset of its Pixel Data element (None: none found)."""

    attrs: dict[str, Any]
    syntax: str
    pixel_offset: int | None

    @property
    def instance_number(self) -> int | None:
        try:
            return int(str(self.attrs.get("InstanceNumber", "")).strip())
        except ValueError:
            return None

    @property
    def z(self) -> float | None:
        parts = str(self.attrs.get("ImagePositionPatient", "")).split("\\")
        try:
            return float(parts[2]) if len(parts) == 3 else None
        except ValueError:
            return None


    def row(self) -> ImageRow:
        """The values the index keeps, compact (what an HTTP request holds per instance until it ends)."""
        return ImageRow(self.instance_number, self.z, self.syntax, self.pixel_offset,
                        json.dumps(self.attrs, separators=(",", ":")))


@dataclass(frozen=True, slots=True)
class ImageRow:
    """An ImageRecord as the index stores it: its attributes as JSON text."""

    instance_number: int | None
    z: float | None
    syntax: str
    pixel_offset: int | None
    attrs_json: str


_NOT_RECORDED = frozenset({"PatientID"})


def image_record(found: dict[str, Any], dataset_start: int, syntax: str) -> ImageRecord | None:
    """The record of a `fast_header` result whose data set starts at `dataset_start` in its file; None
    where the worker must read the header itself (LUT sequences, functional groups)."""
    if found.get(FULL):
        return None
    at = found.get(PIXEL_AT)
    # what ordering and preprocessing need; identity (the Patient ID ingest reads for the audit) stays out
    attrs = {k: v for k, v in found.items() if not k.startswith("_") and k not in _NOT_RECORDED}
    return ImageRecord(attrs, syntax, None if at is None else dataset_start + int(at))


def element_span(data: bytes | memoryview, start: int, tag: int) -> tuple[int, int] | None:
    """(first byte, end) of top-level element `tag` of the explicit VR little endian data set that starts
    at `start` in `data` (a file the node wrote, e.g. an SR), or None where it has none."""
    view = memoryview(data)
    pos = start
    try:
        while pos < len(view):
            at = pos
            found, _, length, pos = _element_header(view, pos, True)
            pos = _skip_undefined(view, pos, True, 0) if length == _UNDEFINED else pos + length
            if found == tag:
                return at, pos
            if found > tag:
                return None
    except _Unexpected:
        return None
    return None
