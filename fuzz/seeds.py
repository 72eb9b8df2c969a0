"""Seed corpora for the harnesses: small valid inputs, so the fuzzer starts deep in each path.

    python fuzz/seeds.py OUT_DIR   writes OUT_DIR/ingest/* and OUT_DIR/pdu/*
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from pydicom.uid import JPEG2000Lossless, RLELossless

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from edge_ai import phantoms  # noqa: E402
from edge_ai.dicom.contexts import DX_PRESENTATION, STORAGE_CLASSES, TRANSFER_SYNTAXES  # noqa: E402


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
    return out


def _after_meta(raw: bytes) -> int:
    from pydicom.filereader import _read_file_meta_info, read_preamble

    f = io.BytesIO(raw)
    read_preamble(f, False)
    _read_file_meta_info(f)
    return f.tell()


def pdu_seeds() -> list[bytes]:
    """Harness input: whole PDUs as they arrive on the wire."""
    from peers import associate_rq

    rq = associate_rq(sop_class="1.2.840.10008.5.1.4.1.1.1.1")
    # P-DATA-TF with a C-ECHO-RQ command (last fragment, command)
    command = (b"\x00\x00\x00\x00\x04\x00\x00\x00\x38\x00\x00\x00" b"\x00\x00\x02\x00\x12\x00\x00\x00"
               b"1.2.840.10008.1.1\x00" b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x00"
               b"\x00\x00\x10\x01\x02\x00\x00\x00\x01\x00" b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01")
    item = bytes([0x01, 0x03]) + command
    body = len(item).to_bytes(4, "big") + item
    pdv = b"\x04\x00" + len(body).to_bytes(4, "big") + body
    release = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    abort = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"
    return [rq, pdv, release, abort]


def main(out: Path) -> None:
    for name, seeds in (("ingest", ingest_seeds()), ("pdu", pdu_seeds())):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds):
            (folder / f"seed{i}").write_bytes(seed)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
