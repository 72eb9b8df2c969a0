"""edge_ai.spool.header: the fast header read agrees with pydicom, or declines and lets pydicom decide."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from cycles import cyclic_garbage
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from edge_ai import phantoms
from edge_ai.spool import ingest
from edge_ai.spool.header import ImageRecord, cut_short, fast_header, image_record, meta_transfer_syntax

KEYS = ingest._HEADER_TAGS + ingest._GEOMETRY_TAGS
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def _split(part10: bytes) -> tuple[str, memoryview]:
    ts = meta_transfer_syntax(part10)
    assert ts is not None
    return ts, memoryview(part10)[ingest.dataset_offset(part10):]


def _ids(fast: dict[str, object]) -> dict[str, object]:
    """The identifying and geometry attributes of a fast read (it also records more for the worker)."""
    return {k: v for k, v in fast.items() if k in KEYS}


def _reference(part10: bytes) -> dict[str, object]:
    ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True, specific_tags=KEYS)
    return {k: ds.get(k) for k in KEYS if k in ds}


def _ct_with_sequence(ts: str, undefined: bool) -> bytes:
    ds, _ = phantoms.ct_case(np.random.default_rng(2), slices=1, size=32, lesion=False)
    ds = ds[0]
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.4", "1.2.3"
    nested = Dataset()
    nested.CodeValue = "X"
    item.PurposeOfReferenceCodeSequence = Sequence([nested])
    ds.ReferencedImageSequence = Sequence([item, item])
    for seq in (ds.ReferencedImageSequence, item.PurposeOfReferenceCodeSequence):
        seq.is_undefined_length = undefined
        for it in seq:
            it.is_undefined_length_sequence_item = undefined
    ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=ts == IMPLICIT, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("ts", [IMPLICIT, EXPLICIT])
@pytest.mark.parametrize("undefined", [True, False])
def test_agrees_with_pydicom_across_sequences(ts: str, undefined: bool) -> None:
    """Nested sequences of defined and undefined length are skipped; the values are pydicom's."""
    part10 = _ct_with_sequence(ts, undefined)
    fast = fast_header(*_split(part10)[::-1])
    assert fast is not None and _ids(fast) == _reference(part10)
    assert fast["Modality"] == "CT" and fast["Rows"] == 32


def test_agrees_with_pydicom_on_its_own_test_files() -> None:
    """Every bundled pydicom test file the fast path takes gives pydicom's values (and it takes most)."""
    root = Path(pydicom.data.__file__).parent / "test_files"
    taken = 0
    for path in sorted(root.rglob("*.dcm")):
        part10 = path.read_bytes()
        ts = meta_transfer_syntax(part10)
        if ts is None or len(part10) < 144:
            continue
        fast = fast_header(memoryview(part10)[ingest.dataset_offset(part10):], ts)
        if fast is None:
            continue
        taken += 1
        assert _ids(fast) == _reference(part10), path.name
    assert taken >= 20


def test_declines_what_it_does_not_read() -> None:
    """Deflate, a cut-off probe and tags out of order go to pydicom (None), never a guess."""
    part10 = _ct_with_sequence(EXPLICIT, True)
    ts, data = _split(part10)
    assert fast_header(data, "1.2.840.10008.1.2.1.99") is None
    assert fast_header(data[:40], ts, complete=False) is None
    raw = bytes(data)
    one = 8 + int.from_bytes(raw[6:8], "little")  # two short-VR elements at the start, swapped
    two = one + 8 + int.from_bytes(raw[one + 6:one + 8], "little")
    assert fast_header(raw[one:two] + raw[:one] + raw[two:], ts) is None


def test_examine_of_a_file_and_of_its_bytes_agree(tmp_path: Path) -> None:
    """ingest.examine reads a spool file's header (fast path) exactly as it reads the same bytes."""
    part10 = _ct_with_sequence(EXPLICIT, True)
    path = tmp_path / "x.dcm"
    path.write_bytes(part10)
    sop_class = pydicom.dcmread(path).SOPClassUID
    assert ingest.examine(path, sop_class, 10**9) == ingest.examine(part10, sop_class, 10**9)


def _implicit(group: int, elem: int, value: bytes) -> bytes:
    value += b"\x00" * (len(value) % 2)
    return struct.pack("<HHI", group, elem, len(value)) + value


def test_declines_an_implicit_undefined_length_element_that_is_not_a_sequence() -> None:
    """pydicom reads an undefined-length (0020,0010) Study ID as raw bytes up to the next sequence
    delimiter, which lifts a nested SOP Instance UID to the top level; the fast path must not guess."""
    uids = (_implicit(0x0008, 0x0016, b"1.2.840.10008.5.1.4.1.1.2") + _implicit(0x0008, 0x0018, b"1.1.1.1")
            + _implicit(0x0008, 0x0060, b"CT") + _implicit(0x0020, 0x000D, b"1.1.1.2")
            + _implicit(0x0020, 0x000E, b"1.1.1.3"))
    nested = struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    item = (struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + nested + _implicit(0x0008, 0x0018, b"6.6.6.6")
            + struct.pack("<HHI", 0xFFFE, 0xE00D, 0))
    study_id = struct.pack("<HHI", 0x0020, 0x0010, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    assert fast_header(uids + study_id + _implicit(0x0028, 0x0010, b"\x08\x00"), IMPLICIT) is None


def test_declines_a_vr_dicom_does_not_define() -> None:
    """Two capital letters are not a VR: pydicom refuses 'QQ', so the fast path declines rather than read on."""
    element = struct.pack("<HH2sH", 0x0008, 0x0005, b"QQ", 2) + b"XX"
    assert fast_header(element, EXPLICIT) is None


# ---- cut_short: a data set whose last element declares more bytes than follow ----------------------
def _local_files() -> list[Path]:
    folder = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    return sorted(p for p in folder.glob("*.dcm") if "truncated" not in p.name and "no_meta" not in p.name)


def _cut(part10: bytes, drop: int = 0, tail: bytes = b"") -> str | None:
    ts, _ = _split(part10)
    data = part10[:len(part10) - drop] + tail
    return cut_short(data, ingest.dataset_offset(part10), len(data), ts)


def test_every_whole_test_file_is_whole() -> None:
    """No whole file of pydicom's test set (big endian, RLE, JPEG 2000, UN sequences, private sequences,
    implicit data under an explicit syntax) is refused as cut short: a modality's valid data is never 0xC000."""
    judged = 0
    for path in _local_files():
        part10 = path.read_bytes()
        try:
            ingest.dataset_offset(part10)
        except ValueError:
            continue  # no group length: pydicom's business
        if meta_transfer_syntax(part10) is None:
            continue
        assert _cut(part10) is None, path.name
        judged += 1
    assert judged > 50


@pytest.mark.parametrize(("name", "element"), [
    ("CT_small.dcm", "(FFFC,FFFC) DataSetTrailingPadding"), ("MR_small_bigendian.dcm", "(7FE0,0010) PixelData"),
    ("rtdose.dcm", "(7FE0,0010) PixelData"), ("JPEG2000.dcm", "(7FE0,0010) PixelData"),
])
def test_two_bytes_short_names_the_element(name: str, element: str) -> None:
    """Two bytes missing at the end of the data set are found, in each byte order and encoding, naming the element."""
    part10 = Path(pydicom.data.get_testdata_file(name)).read_bytes()
    reason = _cut(part10, drop=2)
    assert reason is not None and reason.startswith(element) and len(reason) <= 64


def test_a_few_zero_bytes_of_padding_are_not_a_cut() -> None:
    """Some writers leave a few zero bytes after the last element; pydicom reads such a file, so does the node."""
    part10 = Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()
    for n in (2, 4, 6, 8, 16):
        assert _cut(part10, tail=b"\x00" * n) is None, n
    assert _cut(part10, tail=b"  ") is not None  # two stray non-zero bytes are not an element


def test_a_hostile_data_set_of_empty_elements_is_judged_in_bounded_time() -> None:
    """Millions of zero-length implicit elements do not hold a store for minutes: the walk gives up (accepts)
    after a bounded number of headers."""
    import time

    data = b"".join(struct.pack("<HHI", 0x0009, 0x1000 + (i % 0xE000), 0) for i in range(1_000_000))
    started = time.monotonic()
    assert cut_short(data, 0, len(data), IMPLICIT) is None
    assert time.monotonic() - started < 5


def _bundled_records() -> Iterator[tuple[Path, ImageRecord]]:
    """What ingest records from each bundled pydicom test file it takes (a Part 10 file whose header its
    own reader parses), with the file."""
    root = Path(pydicom.data.__file__).parent / "test_files"
    for path in sorted(root.rglob("*.dcm")):
        part10 = path.read_bytes()
        ts = meta_transfer_syntax(part10)
        if ts is None or len(part10) < 144:
            continue
        start = ingest.dataset_offset(part10)
        fast = fast_header(memoryview(part10)[start:], ts)
        record = None if fast is None else image_record(fast, start, ts)
        if record is not None:
            yield path, record


def test_image_record_gives_what_a_full_header_read_gives() -> None:
    """What ingest records for the worker (instance number, position, rescale, window, pixel module, where
    Pixel Data starts) equals pydicom's reading of the file, on every bundled pydicom test file it takes."""
    from edge_ai.service.reading import record_header

    recorded = 0
    for path, record in _bundled_records():
        recorded += 1
        with path.open("rb") as fp:
            full = pydicom.dcmread(fp, stop_before_pixels=True)
            offset = fp.tell()
        header = record_header(record, {})
        for keyword in record.attrs:
            assert header.get(keyword) == full.get(keyword), (path.name, keyword)
            if keyword in full:  # converted to the same types a read gives (DSfloat, IS, MultiValue, PersonName)
                assert type(header[keyword].value) is type(full[keyword].value), (path.name, keyword)
                if isinstance(full[keyword].value, MultiValue):  # and its items (DSfloat == "1.5" holds too)
                    assert [type(v) for v in header[keyword].value] == [type(v) for v in full[keyword].value]
                assert header[keyword].VR == full[keyword].VR, (path.name, keyword)
        if "PixelData" in pydicom.dcmread(path):
            assert record.pixel_offset == offset, path.name
    assert recorded >= 15


def test_headers_made_from_records_leave_no_reference_cycles() -> None:
    """The worker makes a header for every image: once dropped it is freed at once, not left for the
    garbage collector (multi-valued elements such as positions and spacings were cycles), and a value
    added to a multi-valued element later is still converted as pydicom converts it."""
    from edge_ai.service.reading import record_header

    records = [record for _, record in _bundled_records()]
    multi = 0

    def headers() -> None:
        nonlocal multi
        for record in records:
            header = record_header(record, {})
            multi += sum(isinstance(e.value, MultiValue) for e in header.values())

    assert cyclic_garbage(headers, "pydicom") == []
    assert multi >= 20  # the files do hold multi-valued elements
    header = record_header(next(r for r in records if "ImagePositionPatient" in r.attrs), {})
    header.ImagePositionPatient.append("1.25")
    assert type(header.ImagePositionPatient[-1]) is type(header.ImagePositionPatient[0])
    assert header.ImagePositionPatient[-1] == 1.25
