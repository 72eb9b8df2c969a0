"""Multi-frame images one frame at a time: which frames, in what order, with which header values, and
each frame's stored values read from the stored file without reading or decoding the others.

A 1000-frame 512 x 512 16-bit Enhanced CT is ~500 MB decoded; decoding it whole (pydicom's
`pixel_array`) would hold all of it, and the float copies of the pipeline several times that. Here
one frame is decoded at a time, so memory depends on the frame size, never on the frame count.

Pure: no file is opened here. The caller passes `read_at(offset, size) -> bytes`, a positional read
of the stored Part-10 file (the worker's is `os.pread` on an open descriptor, which is safe to share
between imaging threads; a test's is a slice of bytes).

Frames of an Enhanced (multi-frame) image take their rescale and VOI window from the Per-frame or
Shared Functional Groups (Pixel Value Transformation, Frame VOI LUT): `frame_header` copies those
onto a small header of the frame's own, so the single-frame pipeline (`pixels.preprocess_stored`)
serves every frame unchanged. Order: by the frame's z position (Plane Position (Patient), as slices
are ordered by Image Position (Patient)), then Instance Number, then frame number.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from edge_ai.errors import ImagingError
from edge_ai.imaging import pixels

__all__ = ["Frame", "PixelLayout", "ReadAt", "frame_header", "frames", "is_multiframe", "pixel_layout",
           "stored_frame"]

ReadAt = Callable[[int, int], bytes]
"""(offset, size) -> up to `size` bytes of the stored file from `offset`."""

_NATIVE = {"1.2.840.10008.1.2": ("<", False), "1.2.840.10008.1.2.1": ("<", True),
           "1.2.840.10008.1.2.2": (">", True)}  # transfer syntax -> (byte order, explicit VR)
_ENCAPSULATED_PREFIX = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5")  # JPEG family, RLE
_LONG_VRS = (b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN")
_INTS = {8: "u1", 16: "u2", 32: "u4"}
_UNDEFINED = 0xFFFFFFFF
# the frame's own header: the pixel module and what the pipeline reads (LUT, VOI, identity for errors)
_FRAME_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "SamplesPerPixel", "PhotometricInterpretation", "Rows",
    "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTSequence",
)
_FRAME_TAGS = tuple(Tag(k) for k in _FRAME_KEYWORDS)
_RESCALE_TAGS = tuple(Tag(k) for k in ("RescaleSlope", "RescaleIntercept", "RescaleType"))
_WINDOW_TAGS = tuple(Tag(k) for k in ("WindowCenter", "WindowWidth"))
_RESCALE_SLOPE, _MODALITY_LUT, _WINDOW_CENTER = Tag("RescaleSlope"), Tag("ModalityLUTSequence"), Tag("WindowCenter")
_SHARED, _PER_FRAME = Tag("SharedFunctionalGroupsSequence"), Tag("PerFrameFunctionalGroupsSequence")


@dataclass(frozen=True)
class Frame:
    """One model input of an instance.

    Attributes:
        index: 0-based position of the frame in the Pixel Data.
        number: Referenced Frame Number (1-based) for a multi-frame image; None for a single-frame one,
            whose references name the instance alone.
        key: sort key: z position, Instance Number, frame number (slices and frames sort alike).
    """

    index: int
    number: int | None
    key: tuple[float, int, int]


def is_multiframe(ds: Dataset) -> bool:
    """True for an image whose references name a frame: more than one frame, or an Enhanced (functional
    groups) image of any count. A single-frame image that carries Number of Frames 1 is referenced as a
    whole, as before multi-frame support, so its SR does not change.

    Raises:
        ImagingError: Number of Frames is not a positive number.
    """
    return pixels.frame_count(ds) > 1 or _SHARED in ds or _PER_FRAME in ds


def _z(position: Any) -> float | None:
    try:
        return float(position[2]) if position is not None and len(position) == 3 else None
    except (TypeError, ValueError):
        return None


def _plane_z(ds: Dataset, index: int) -> float | None:
    item = pixels.frame_item(ds, "PlanePositionSequence", index, "ImagePositionPatient")
    return None if item is None else _z(item.get("ImagePositionPatient"))


def frames(ds: Dataset) -> list[Frame]:
    """The frames of `ds` in stored order (sort by `Frame.key` for anatomical order).

    Raises:
        ImagingError: Number of Frames is not a positive number.
    """
    count = pixels.frame_count(ds)
    instance = int(ds.get("InstanceNumber") or 0)
    z_instance = _z(ds.get("ImagePositionPatient"))
    if not is_multiframe(ds):
        return [Frame(0, None, (z_instance or 0.0, instance, 0))]
    out = []
    for index in range(count):
        z = _plane_z(ds, index)
        out.append(Frame(index, index + 1, (z if z is not None else z_instance or 0.0, instance, index + 1)))
    return out


def frame_header(ds: Dataset, frame: Frame) -> Dataset:
    """The header the pipeline reads for `frame`: `ds` itself for a single-frame image; for a frame of a
    multi-frame image, its pixel module with the frame's rescale and window (Per-frame, else Shared
    Functional Groups) where `ds` has none of its own, as plain top-level attributes."""
    if frame.number is None:
        return ds
    out = Dataset()
    for tag in _FRAME_TAGS:
        element = ds.get_item(tag)  # copied as read: converted only if the pipeline reads it
        if element is not None:
            out[tag] = element
    if _RESCALE_SLOPE not in out and _MODALITY_LUT not in out:
        item = pixels.frame_item(ds, "PixelValueTransformationSequence", frame.index, "RescaleSlope")
        _copy(item, out, _RESCALE_TAGS)
    if _WINDOW_CENTER not in out:
        item = pixels.frame_item(ds, "FrameVOILUTSequence", frame.index, "WindowCenter")
        _copy(item, out, _WINDOW_TAGS)
    out.NumberOfFrames = 1
    out.file_meta = ds.file_meta
    return out


def _copy(source: Dataset | None, target: Dataset, tags: Sequence[BaseTag]) -> None:
    if source is None:
        return
    for tag in tags:
        element = source.get_item(tag)
        if element is not None:
            target[tag] = element


@dataclass(frozen=True)
class PixelLayout:
    """Where each frame's stored bytes lie in the file: (offset, length) pieces per frame (one for native
    data; the frame's fragments for encapsulated data)."""

    syntax: str
    pieces: tuple[tuple[tuple[int, int], ...], ...]


def pixel_layout(ds: Dataset, read_at: ReadAt, element_offset: int | None) -> PixelLayout | None:
    """Locate every frame of the Pixel Data element that starts at `element_offset`.

    Returns None where frames cannot be read one at a time here (deflated data set, unknown or short
    element, 1-bit data): the caller then lets pydicom read the file.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if element_offset is None:
        return None
    try:
        if syntax in _NATIVE:
            return _native_layout(ds, read_at, element_offset, syntax)
        if syntax.startswith(_ENCAPSULATED_PREFIX):
            return _encapsulated_layout(ds, read_at, element_offset, syntax)
    except (struct.error, ValueError, TypeError, IndexError):  # a malformed element: pydicom says why
        return None
    return None


def _element(read_at: ReadAt, offset: int, order: str, explicit: bool) -> tuple[int, int] | None:
    """(value offset, value length) of the Pixel Data element at `offset`, or None if it is not there."""
    head = read_at(offset, 12 if explicit else 8)
    if len(head) < 8 or struct.unpack(f"{order}HH", head[:4]) != (0x7FE0, 0x0010):
        return None
    if not explicit:
        return offset + 8, struct.unpack(f"{order}L", head[4:8])[0]
    if len(head) < 12 or head[4:6] not in _LONG_VRS:
        return None
    return offset + 12, struct.unpack(f"{order}L", head[8:12])[0]


def _native_layout(ds: Dataset, read_at: ReadAt, offset: int, syntax: str) -> PixelLayout | None:
    order, explicit = _NATIVE[syntax]
    found = _element(read_at, offset, order, explicit)
    bits = int(ds.get("BitsAllocated") or 0)
    if found is None or bits not in _INTS or int(ds.get("SamplesPerPixel") or 1) != 1:
        return None
    start, length = found
    size = int(ds.Rows) * int(ds.Columns) * bits // 8
    count = pixels.frame_count(ds)
    if length == _UNDEFINED or length < size * count:
        return None
    return PixelLayout(syntax, tuple(((start + i * size, size),) for i in range(count)))


def _encapsulated_layout(ds: Dataset, read_at: ReadAt, offset: int, syntax: str) -> PixelLayout | None:
    found = _element(read_at, offset, "<", True)
    if found is None or found[1] != _UNDEFINED:
        return None
    items = _items(read_at, found[0])
    if not items:
        return None
    (bot_at, bot_length), fragments = items[0], items[1:]
    count = pixels.frame_count(ds)
    if bot_length:
        if bot_length > 4 * count:  # one 4-byte offset per frame: more is not a Basic Offset Table
            raise ValueError("Basic Offset Table longer than the frames")
        raw = read_at(bot_at, bot_length)
        starts = [fragments[0][0] - 8 + v for v in struct.unpack(f"<{bot_length // 4}L", raw)]
        groups = _group_by_starts(fragments, starts)
    elif "ExtendedOffsetTable" in ds:
        base = fragments[0][0] - 8
        groups = _group_by_starts(fragments, [base + v for v in _eot(ds.ExtendedOffsetTable)])
    elif len(fragments) == count:
        groups = [[f] for f in fragments]
    else:  # JPEG family: a frame ends with the fragment that ends with an EOI/EOC marker (as pydicom)
        groups, current = [], []
        for at, length in fragments:
            current.append((at, length))
            if b"\xff\xd9" in read_at(at + max(0, length - 10), min(10, length)):
                groups.append(current)
                current = []
        if current:
            groups.append(current)
    if len(groups) < count:
        return None
    return PixelLayout(syntax, tuple(tuple(g) for g in groups[:count]))


def _eot(value: Any) -> list[int]:
    raw = bytes(value)
    return list(struct.unpack(f"<{len(raw) // 8}Q", raw))


def _items(read_at: ReadAt, at: int) -> list[tuple[int, int]]:
    """(value offset, length) of every item of encapsulated Pixel Data, Basic Offset Table first."""
    out: list[tuple[int, int]] = []
    while True:
        head = read_at(at, 8)
        if len(head) < 8:
            raise ValueError("encapsulated pixel data ends without a sequence delimiter")
        group, element, length = struct.unpack("<HHL", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            return out
        if (group, element) != (0xFFFE, 0xE000) or length == _UNDEFINED:
            raise ValueError("encapsulated pixel data item expected")
        out.append((at + 8, length))
        at += 8 + length


def _group_by_starts(fragments: Sequence[tuple[int, int]], starts: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Fragments grouped into frames at the item offsets a (basic or extended) offset table gives."""
    items = [at - 8 for at, _ in fragments]  # where each fragment's item tag is, ascending
    bounds = [bisect.bisect_left(items, start) for start in starts]
    ends = [*bounds[1:], len(fragments)]
    if any(b >= len(items) or items[b] != start for b, start in zip(bounds, starts, strict=True)) or any(
        e <= b for b, e in zip(bounds, ends, strict=True)
    ):
        raise ValueError("offset table does not match the fragments")
    return [list(fragments[b:e]) for b, e in zip(bounds, ends, strict=True)]


def stored_frame(ds: Dataset, layout: PixelLayout, read_at: ReadAt, index: int) -> np.ndarray:
    """The stored values of frame `index` (0-based) as [rows, columns], as pydicom's decoder gives them
    (unused high bits masked, or sign-extended when signed).

    Raises:
        ImagingError: short file, or the frame does not decode (the caller names the frame).
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows * cols > pixels.MAX_PIXELS:  # checked before reading: the bytes read follow the geometry
        raise ImagingError(f"image too large: {rows} x {cols} per frame exceeds {pixels.MAX_PIXELS}")
    data = b"".join(read_at(at, length) for at, length in layout.pieces[index])
    if layout.syntax in _NATIVE:
        order = _NATIVE[layout.syntax][0]
        bits = int(ds.BitsAllocated)
        dtype = np.dtype(f"{order}{'i' if int(ds.get('PixelRepresentation') or 0) else 'u'}{bits // 8}")
        if len(data) < rows * cols * dtype.itemsize:
            raise ImagingError("pixel data cut short")
        stored = np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
        return pixels.mask_unused_bits(stored.astype(dtype.newbyteorder("="), copy=False), ds)
    opts = as_pixel_options(ds, number_of_frames=1)
    opts.pop("extended_offsets", None)
    try:
        arr, _ = get_decoder(UID(layout.syntax)).as_array(encapsulate([data]), **opts)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # as pixels.decode: any decoder failure (a Rust panic too) is bad data
        name = UID(layout.syntax).name
        raise ImagingError(f"cannot decode pixel data ({name}): {type(exc).__name__}: {exc}") from exc
    out = np.asarray(arr)
    if out.size != rows * cols:
        raise ImagingError(f"decoded frame holds {out.size} values, {rows} x {cols} expected")
    return out.reshape(rows, cols)
