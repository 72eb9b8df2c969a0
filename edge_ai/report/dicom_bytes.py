"""DICOM data elements encoded straight to bytes, as pydicom writes them (explicit VR little endian).

pydicom spends ~15 us setting an attribute and as much again writing it; an SR of ~430 elements
built that way costs tens of milliseconds. These helpers make the very bytes pydicom's writer makes
(defined lengths, text padded with a space and UIDs with NUL to even length, text in the dataset's
character set) in a few microseconds per element. An element is `(tag, bytes)` so that a dataset's
elements can be put in tag order, as pydicom writes them. Pure; used by `sr_tree` and `sr_document`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from io import BytesIO

from pydicom.charset import encode_string
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset

Element = tuple[int, bytes]
"""A data element: its tag (to order a dataset's elements) and its complete encoding."""

# explicit VR: these VRs have two reserved bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_ITEM = struct.Struct("<HHL")


def element(tag: int, vr: str, value: bytes) -> Element:
    """One element of `value` (already encoded), padded to even length as pydicom pads it."""
    if len(value) & 1:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    if vr in _LONG_VRS:
        head = struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value))
    else:
        head = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value))
    return tag, head + value


def text(tag: int, vr: str, value: str, encodings: Sequence[str]) -> Element:
    """A text element (CS, SH, LO, ST, UT, UC, UR, DA, TM, DT, IS, DS, UI) in the dataset's character set."""
    raw = value.encode("ascii") if value.isascii() else encode_string(value, list(encodings))
    return element(tag, vr, raw)


def floats32(tag: int, values: Sequence[float]) -> Element:
    """An FL element (e.g. Graphic Data)."""
    return element(tag, "FL", struct.pack(f"<{len(values)}f", *values))


def float64(tag: int, value: float) -> Element:
    """A single-valued FD element."""
    return element(tag, "FD", struct.pack("<d", value))


def item(elements: Iterable[Element], *, ordered: bool = False) -> bytes:
    """One sequence item of `elements`; they are put in tag order unless the caller says they are."""
    listed = list(elements) if ordered else sorted(elements)
    body = b"".join(encoded for _, encoded in listed)
    return _ITEM.pack(0xFFFE, 0xE000, len(body)) + body


def sequence(tag: int, items: Iterable[bytes]) -> Element:
    """An SQ element of defined length from encoded items (`item`); no items gives an empty sequence."""
    return element(tag, "SQ", b"".join(items))


def pydicom_element(elem: DataElement, encodings: str | list[str] | None) -> Element:
    """`elem` exactly as pydicom's writer encodes it in a dataset of `encodings`: for values taken over
    from a source header (any VR, sequences, multiple values), where mirroring pydicom is not worth it."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem, encodings)
    return int(elem.tag), fp.getvalue()


def pydicom_item(ds: Dataset, encodings: str | list[str] | None) -> bytes:
    """The sequence item pydicom writes for `ds` inside a dataset of `encodings`."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds, encodings)  # type: ignore[arg-type]
    body = fp.getvalue()
    return _ITEM.pack(0xFFFE, 0xE000, len(body)) + body


def dataset_bytes(elements: Iterable[Element]) -> bytes:
    """The elements of a dataset in tag order, as its body is written."""
    out = BytesIO()
    for _, encoded in sorted(elements):
        out.write(encoded)
    return out.getvalue()
