"""Stored instances -> model inputs, one image at a time: the worker's file-reading side of `imaging.frames`.

An image is a single-frame instance or one frame of a multi-frame one (`Unit`); `units` lists them in
slice order and `tensor` makes one model input, reading only that frame's bytes from the stored file
(positional reads, safe to share between imaging threads). The pure work (where frames lie, their
order and header values, decoding and preprocessing) is in `edge_ai.imaging`.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from edge_ai.domain import InstanceRef
from edge_ai.errors import ImagingError
from edge_ai.imaging import frames, pixels
from edge_ai.inference.package import Preprocessing
from edge_ai.spool.header import ImageRecord
from edge_ai.spool.index import Kept

__all__ = ["Source", "Unit", "read_header", "record_header", "source", "tensor", "units"]


@dataclass(frozen=True)
class Source:
    """One instance to infer: its spool entry, header and where its Pixel Data element starts."""

    ref: InstanceRef
    header: Dataset
    pixel_offset: int | None
    instance_id: int = 0


Metas = dict[str, FileMetaDataset]  # one File Meta per transfer syntax, shared by the headers made here


def source(kept: Kept, metas: Metas) -> Source:
    """The instance's header from the image record ingest kept (no file read), or, where it kept none
    (functional groups, LUT sequences, deflated or big endian data sets), read from the file."""
    if kept.image is not None:
        return Source(kept.ref, record_header(kept.image, metas), kept.image.pixel_offset, kept.instance_id)
    header, offset = read_header(kept.ref)
    return Source(kept.ref, header, offset, kept.instance_id)


def record_header(image: ImageRecord, metas: Metas) -> Dataset:
    """A header holding the recorded attributes, converted by pydicom as a read of the file converts them.

    Made for every image while its series arrives, on the worker's thread, which then holds the GIL
    that reception needs: so the elements go straight into the data set, without the value checks
    (ingest parsed these values from the file; a read would only warn) or a dictionary lookup per
    attribute. The values are converted exactly as `Dataset.add_new` converts them (tested).
    """
    ds = Dataset()
    elements = ds._dict  # pydicom's own store: __setitem__ would check the tag again
    for keyword, value in image.attrs.items():
        known = _tag_vr(keyword)
        if known is not None:
            tag, vr = known
            element = DataElement(tag, vr, None if value == "" else value,  # empty: None, as a read gives
                                  validation_mode=config.IGNORE)
            _uncycled(element)
            elements[tag] = element
    ds.file_meta = _meta(image.syntax, metas)
    return ds


def _uncycled(element: DataElement) -> None:
    """A multi-valued element (a position, a spacing) holds its values in a MultiValue that converts what
    is added later with the element's own bound method: a reference cycle, freed only by the garbage
    collector's rounds. Made for every image, these cycles were most of what the node's collector
    found (~9,000 elements and ~40,000 numbers a minute in the soak). The MultiValue converts with a
    kept element of the same tag and VR instead: the same conversion, no cycle, freed with the header."""
    values = element.value
    if not isinstance(values, MultiValue):
        return
    constructor = getattr(values, "_constructor", None)  # pydicom 3.0's; renamed, the cycle stays, nothing fails
    if getattr(constructor, "__self__", None) is element:
        values._constructor = _converter(element.tag, element.VR)


@functools.cache
def _converter(tag: BaseTag, vr: str) -> Callable[[object], object]:
    return DataElement(tag, vr, None, validation_mode=config.IGNORE)._convert


@functools.cache
def _tag_vr(keyword: str) -> tuple[BaseTag, str] | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None else (Tag(tag), dictionary_VR(tag))


def _meta(syntax: str, metas: Metas) -> FileMetaDataset:
    if syntax not in metas:
        metas[syntax] = FileMetaDataset()
        if syntax:
            metas[syntax].TransferSyntaxUID = UID(syntax)
    return metas[syntax]


def read_header(ref: InstanceRef, keep: tuple[str, ...] | None = None) -> tuple[Dataset, int | None]:
    """The header (no pixel data) from the stored file, and the offset where it stopped: the Pixel Data
    element. `keep`: only these keywords stay (and the File Meta), for a header held for long.

    Raises:
        ImagingError: the stored file no longer parses (its job fails with the reason).
    """
    try:
        with open(ref.path, "rb") as fp:
            header = pydicom.dcmread(fp, stop_before_pixels=True)
            offset = fp.tell()
    except Exception as exc:
        raise ImagingError(f"instance {ref.sop_instance_uid}: cannot read header: {type(exc).__name__}") from exc
    if keep is None:
        return header, offset
    slim = Dataset()
    for keyword in keep:
        element = header.get_item(keyword)
        if element is not None:
            slim[element.tag] = element
    slim.file_meta = header.file_meta
    return slim, offset


class _WholeRead:
    """pydicom's read of a multi-frame instance whose frames cannot be located in the file (a deflated
    data set): read once for all its frames, each then decoded alone, and dropped after the last one.
    It holds the stored bytes, as pydicom's header read of such a file already did."""

    def __init__(self, path: str, count: int) -> None:
        self._path, self._left = path, count
        self._ds: Dataset | None = None
        self._lock = threading.Lock()

    def frame(self, index: int) -> np.ndarray:
        with self._lock:
            if self._ds is None:
                try:
                    self._ds = pydicom.dcmread(self._path)
                except OSError:
                    raise
                except Exception as exc:  # stored bytes pydicom cannot parse: this job fails with the reason
                    raise ImagingError(f"cannot read the stored file: {type(exc).__name__}: {exc}") from exc
            ds = self._ds
            self._left -= 1
            if self._left <= 0:
                self._ds = None
        try:
            arr, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=index)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # as pixels.decode: any decoder failure is bad data
            raise ImagingError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
        return np.asarray(arr)


@dataclass(frozen=True)
class Unit:
    """One model input: a single-frame instance, or one frame of a multi-frame instance, with where the
    stored bytes of each of that instance's frames lie (None: located later, or pydicom reads it)."""

    source: Source
    frame: frames.Frame
    layout: frames.PixelLayout | None
    whole: _WholeRead | None = field(default=None, compare=False)


def units(sources: Sequence[Source]) -> list[Unit]:
    """Every frame of every source, instance by instance (the job store orders outputs by `Frame.key`).

    Each multi-frame file is opened once here to locate its frames (a few bytes per frame are read);
    a single-frame one is located when its tensor is made, on an imaging thread.
    """
    out: list[Unit] = []
    for source in sources:
        try:
            listed = frames.frames(source.header)
        except ImagingError as exc:
            raise ImagingError(f"instance {source.ref.sop_instance_uid}: {exc}") from exc
        if listed[0].number is None:
            out.append(Unit(source, listed[0], None))
            continue
        layout = _layout(source)
        whole = _WholeRead(source.ref.path, len(listed)) if layout is None else None
        out.extend(Unit(source, frame, layout, whole) for frame in listed)
    return out


def _layout(source: Source) -> frames.PixelLayout | None:
    try:
        fd = os.open(source.ref.path, os.O_RDONLY)
    except OSError:
        return None  # pydicom's read reports it with the instance's reason
    try:
        return frames.pixel_layout(source.header, _read_at(fd), source.pixel_offset)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_at(fd: int) -> frames.ReadAt:
    return lambda offset, size: os.pread(fd, size, offset)


def tensor(unit: Unit, header: Dataset, spec: Preprocessing) -> np.ndarray:
    """The model input for one image (`header`: `frames.frame_header` of it).

    Uncompressed and encapsulated pixel data are read straight from the stored file at the offset the
    header read stopped at, one frame's bytes only: for a CT slice 2.3 ms of pydicom (a second parse,
    then its decoder) -> ~0.1 ms (docs/performance.md); for a multi-frame instance, memory of one
    frame, whatever the frame count. Anything else (deflated, 1-bit) goes through pydicom.

    Raises:
        ImagingError: naming the instance (and frame) and why.
    """
    source, frame = unit.source, unit.frame
    where = f"instance {source.ref.sop_instance_uid}" + (f" frame {frame.number}" if frame.number else "")
    try:
        fd = os.open(source.ref.path, os.O_RDONLY)
    except OSError as exc:
        raise ImagingError(f"{where}: cannot read the stored file: {exc.strerror}") from exc
    try:
        read_at = _read_at(fd)
        layout = unit.layout if frame.number is not None else frames.pixel_layout(
            source.header, read_at, source.pixel_offset)
        if layout is not None:
            return pixels.preprocess_stored(header, frames.stored_frame(header, layout, read_at, frame.index), spec)
        if unit.whole is not None:
            return pixels.preprocess_stored(header, unit.whole.frame(frame.index), spec)
        return pixels.preprocess(pydicom.dcmread(source.ref.path), spec)
    except ImagingError as exc:
        raise ImagingError(f"{where}: {exc}") from exc
    except OSError as exc:
        raise ImagingError(f"{where}: cannot read the stored file: {exc.strerror}") from exc
    finally:
        os.close(fd)
