"""Uncompressed pixel data read straight from the stored file gives the model the same tensor."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from edge_ai import phantoms
from edge_ai.domain import InstanceRef
from edge_ai.errors import ImagingError
from edge_ai.imaging import frames, pixels
from edge_ai.inference.package import Preprocessing, Window
from edge_ai.service import reading

SPEC = Preprocessing(window=Window(source="fixed", center=40.0, width=400.0), resize=(32, 32), mean=0.5, std=0.25)


def _ct() -> Dataset:
    series, _ = phantoms.ct_case(np.random.default_rng(22), slices=3, size=64, lesion=False)
    return series[1]


def _dx() -> Dataset:
    ds, _ = phantoms.dx_case(np.random.default_rng(21), size=96, lesion=True)
    return ds


def _variants() -> list[tuple[str, Dataset]]:
    ct, dx = _ct(), _dx()
    out = [("ct", ct), ("dx", dx)]
    implicit = copy.deepcopy(ct)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out.append(("implicit", implicit))
    # Bits Stored 12 with junk in the unused high bits: pydicom masks (unsigned) or sign-extends (signed)
    for signed in (0, 1):
        junk = copy.deepcopy(ct)
        stored = (ct.pixel_array.astype(np.int32) & 0x0FFF).astype(np.uint16) | np.uint16(0xA000)
        junk.BitsStored, junk.HighBit, junk.PixelRepresentation = 12, 11, signed
        junk.PixelData = stored.astype("<u2").tobytes()
        out.append((f"bits-stored-12-signed-{signed}", junk))
    eight = copy.deepcopy(dx)
    eight.BitsAllocated, eight.BitsStored, eight.HighBit, eight.PixelRepresentation = 8, 8, 7, 0
    eight.PixelData = (dx.pixel_array >> 8).astype(np.uint8).tobytes()
    eight.PhotometricInterpretation = "MONOCHROME1"
    out.append(("8-bit-monochrome1", eight))
    return out


@pytest.mark.parametrize(("name", "ds"), _variants(), ids=[n for n, _ in _variants()])
def test_native_read_equals_pydicom_decode(tmp_path: Path, name: str, ds: Dataset) -> None:
    """Header + raw bytes from the file give exactly the tensor pydicom's full decode gives."""
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    full = pydicom.dcmread(path)
    ref = InstanceRef(str(full.SOPClassUID), str(full.SOPInstanceUID), "", "", str(path), "", 0)
    header, offset = reading.read_header(ref)
    assert "PixelData" not in header and offset is not None
    dtype = pixels.native_dtype(header)
    assert dtype is not None
    spec = SPEC if name != "dx" else Preprocessing(window=Window(source="percentile"), resize=(32, 32))
    with path.open("rb") as fp:
        raw = np.frombuffer(fp.read(), dtype=np.uint8)
    layout = frames.pixel_layout(header, lambda at, size: bytes(raw[at:at + size]), offset)
    assert layout is not None and len(layout.pieces) == 1
    source = reading.Source(ref, header, offset)
    (unit,) = reading.units([source])
    np.testing.assert_array_equal(reading.tensor(unit, header, spec), pixels.preprocess(full, spec))


def test_short_or_misplaced_pixel_data_is_left_to_pydicom(tmp_path: Path) -> None:
    """Only whole pixel data is read by offset; short data is left to pydicom's decoder (and its error)."""
    ct = _ct()
    short = copy.deepcopy(ct)
    short.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    short.PixelData = short.PixelData[:100]
    path = tmp_path / "short.dcm"
    short.save_as(path, enforce_file_format=True)
    ref = InstanceRef("", "", "", "", str(path), "", 0)
    header, offset = reading.read_header(ref)
    data = path.read_bytes()

    def read_at(at: int, size: int) -> bytes:
        return data[at:at + size]

    assert frames.pixel_layout(header, read_at, offset) is None
    assert frames.pixel_layout(header, read_at, None) is None
    assert frames.pixel_layout(header, read_at, 0) is None  # not the Pixel Data element there


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_slice_read_by_offset_equals_pydicom_decode(tmp_path: Path, syntax: str) -> None:
    """A compressed single-frame slice, its one fragment read from the file, gives pydicom's tensor."""
    ds = _ct()
    try:
        ds.compress(syntax)
    except (RuntimeError, NotImplementedError, ValueError) as exc:  # no encoder plugin installed
        pytest.skip(f"cannot encode {syntax}: {exc}")
    path = tmp_path / "packed.dcm"
    ds.save_as(path, enforce_file_format=True)
    ref = InstanceRef("", "", "", "", str(path), "", 0)
    header, offset = reading.read_header(ref)
    (unit,) = reading.units([reading.Source(ref, header, offset)])
    np.testing.assert_array_equal(reading.tensor(unit, header, SPEC), pixels.preprocess(pydicom.dcmread(path), SPEC))


def test_corrupt_frame_fails_naming_instance_and_frame(tmp_path: Path) -> None:
    """A multi-frame instance with one undecodable frame fails its job with a reason naming that frame."""
    vol, _ = phantoms.ct_volume(np.random.default_rng(3), slices=3, size=32, lesion=False)
    ds = phantoms.enhanced_ct_dataset(vol)
    ds.compress(RLELossless)
    frames_ = [bytes(f) for f in pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=3)]
    frames_[1] = frames_[1][:64] + b"\x00" * 8  # header of 2 segments, data cut
    ds.PixelData = pydicom.encaps.encapsulate(frames_)
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    ref = InstanceRef("", str(ds.SOPInstanceUID), "", "", str(path), "", 0)
    header, offset = reading.read_header(ref)
    units = sorted(reading.units([reading.Source(ref, header, offset)]), key=lambda u: u.frame.index)
    reading.tensor(units[0], frames.frame_header(header, units[0].frame), SPEC)
    with pytest.raises(ImagingError, match=f"instance {ds.SOPInstanceUID} frame 2: cannot decode pixel data"):
        reading.tensor(units[1], frames.frame_header(header, units[1].frame), SPEC)
