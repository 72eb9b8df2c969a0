"""Seed corpora for the harnesses: small valid inputs, so the fuzzer starts deep in each path.

    python fuzz/seeds.py OUT_DIR   writes OUT_DIR/ingest/* and OUT_DIR/pdu/*
"""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
from pydicom.uid import JPEG2000Lossless, RLELossless

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from edge_ai import phantoms  # noqa: E402
from edge_ai.dicom.contexts import (  # noqa: E402
    DX_PRESENTATION,
    ENHANCED_CT,
    STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
)


def ingest_seeds() -> list[bytes]:
    """Harness input: [transfer syntax index, SOP class index] + data set bytes."""
    out = []
    classes = list(STORAGE_CLASSES)
    for ts in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", RLELossless, JPEG2000Lossless):
        ds, _ = phantoms.dx_case(np.random.default_rng(1), size=32, lesion=False)
        if ts not in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
            ds.compress(ts)
        ds.file_meta.TransferSyntaxUID = ts
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        raw = buf.getvalue()
        prefix = bytes([TRANSFER_SYNTAXES.index(ts), classes.index(DX_PRESENTATION)])
        out.append(prefix + raw[_after_meta(raw):])
    volume, _ = phantoms.ct_volume(np.random.default_rng(1), slices=3, size=16, lesion=False)
    for ts in ("1.2.840.10008.1.2.1", RLELossless):  # Enhanced CT, 3 frames: the frame-by-frame path
        ds = phantoms.enhanced_ct_dataset(volume)
        if ts == RLELossless:
            ds.compress(ts)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        raw = buf.getvalue()
        out.append(bytes([TRANSFER_SYNTAXES.index(ts), classes.index(ENHANCED_CT)]) + raw[_after_meta(raw):])
    return out


def _after_meta(raw: bytes) -> int:
    from pydicom.filereader import _read_file_meta_info, read_preamble

    f = io.BytesIO(raw)
    read_preamble(f, False)
    _read_file_meta_info(f)
    return f.tell()


def _command(*elements: tuple[int, bytes]) -> bytes:
    """A DIMSE command set (implicit VR little endian) with its group length."""
    body = b"".join(struct.pack("<HHI", 0, tag, len(v)) + v for tag, v in elements)
    return struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body


def _pdata(context_id: int, control: int, payload: bytes) -> bytes:
    item = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return b"\x04\x00" + struct.pack(">I", len(item)) + item


def pdu_seeds() -> list[bytes]:
    """Harness input: a connection's bytes, as they arrive on the wire (whole conversations)."""
    from peers import associate_rq

    dx = "1.2.840.10008.5.1.4.1.1.1.1"
    release = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    abort = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"
    echo = _command((0x0002, b"1.2.840.10008.1.1\x00"), (0x0100, b"\x30\x00"), (0x0110, b"\x01\x00"),
                    (0x0800, b"\x01\x01"))
    store = _command((0x0002, dx.encode()), (0x0100, b"\x01\x00"), (0x0110, b"\x02\x00"),
                     (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), (0x1000, b"1.2.3.4\x00"))
    data_set = bytes(ingest_seeds()[0][2:200])
    verification = associate_rq(calling="CT_SCANNER_1")
    storage = associate_rq(calling="CT_SCANNER_1", sop_class=dx)
    return [
        verification + _pdata(1, 0x03, echo) + release,
        storage + _pdata(1, 0x03, store) + _pdata(1, 0x00, data_set[:100]) + _pdata(1, 0x02, data_set[100:])
        + release,
        storage + _pdata(1, 0x01, store[:20]) + _pdata(1, 0x03, store[20:]) + abort,
        associate_rq(calling="INTRUDER") + release,
    ]


def main(out: Path) -> None:
    for name, seeds in (("ingest", ingest_seeds()), ("pdu", pdu_seeds())):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds):
            (folder / f"seed{i}").write_bytes(seed)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
