"""Fuzz the path from received bytes to model tensor: Part-10 header parse -> ingest checks -> decode ->
pixels.preprocess, and the worker's frame-by-frame path (imaging.frames: frame layout from the stored
bytes, one frame decoded, pixels.preprocess_stored) on up to 3 frames.
Input: [transfer syntax index, SOP class index] + data set bytes.

Allowed outcomes are the ones the node turns into an answer: RejectedInstance (a refusal the SCP maps to
a DIMSE status) at ingest
(strict: any other exception there would be answered 0x0110 instead of the right status); in the worker
an ImagingError or any other Exception, which its boundary turns into a failed job with the reason.
Findings: anything else (a BaseException such as a Rust panic from a decoder, which kills the worker
thread), a hang over -timeout, or memory over -rss_limit_mb.

    python fuzz/fuzz_ingest.py CORPUS_DIR -runs=50000 -rss_limit_mb=2048 -timeout=10
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# CI instruments edge_ai only (~500 inputs/s); FUZZ_DEEP=1 also instruments pydicom for the long run
DEEP = bool(os.environ.get("FUZZ_DEEP"))

with atheris.instrument_imports(include=["edge_ai", "pydicom"] if DEEP else ["edge_ai"]):
    import pydicom
    from pydicom.dataset import FileMetaDataset

    from edge_ai.dicom.contexts import STORAGE_CLASSES, TRANSFER_SYNTAXES
    from edge_ai.errors import ImagingError, RejectedInstance
    from edge_ai.imaging import frames, pixels
    from edge_ai.inference.package import Preprocessing, Window
    from edge_ai.spool.ingest import DEFAULT_MAX_INSTANCE_BYTES, examine

warnings.filterwarnings("ignore")  # pydicom warns about every odd value; the outcomes are what count
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
CLASSES = list(STORAGE_CLASSES)
SPEC = Preprocessing(window=Window(source="dataset"), resize=(32, 32))
# keep one run's decode under the 2 GB RSS limit while still covering the ingest limit logic
MAX_INSTANCE_BYTES = min(DEFAULT_MAX_INSTANCE_BYTES, 64 * 1024 * 1024)


def part10(data_set: bytes, ts: str, sop_class: str) -> bytes:
    """What the SCP writes: preamble, file meta (as pynetdicom builds it), the data set as received."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + data_set


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    ts = TRANSFER_SYNTAXES[data[0] % len(TRANSFER_SYNTAXES)]
    sop_class = CLASSES[data[1] % len(CLASSES)]
    received = part10(data[2:], ts, sop_class)
    try:
        examine(received, sop_class, MAX_INSTANCE_BYTES)
    except RejectedInstance:
        return
    try:
        ds = pydicom.dcmread(io.BytesIO(received))
        ds.get("PixelData")
    except Exception:  # the worker fails the job: "stored file no longer parses"
        return
    frame_by_frame(received)
    try:
        tensor = pixels.preprocess(ds, SPEC)
    except ImagingError:
        return
    except Exception:  # the worker's boundary fails the job with the reason; only BaseExceptions escape it
        return
    assert tensor.shape == (1, 32, 32), tensor.shape


def frame_by_frame(received: bytes) -> None:
    """The worker's path (service/reading.py) on the same bytes: same allowed outcomes."""

    def read_at(at: int, size: int) -> bytes:
        return received[at:at + size]

    tensors = []
    try:
        fp = io.BytesIO(received)
        header = pydicom.dcmread(fp, stop_before_pixels=True)
        offset = fp.tell()
        listed = frames.frames(header)
        layout = frames.pixel_layout(header, read_at, offset)
        if layout is None:  # the worker lets pydicom read it: covered by the whole-decode path
            return
        for frame in listed[:3]:
            ds = frames.frame_header(header, frame)
            stored = frames.stored_frame(ds, layout, read_at, frame.index)
            tensors.append(pixels.preprocess_stored(ds, stored, SPEC))
    except ImagingError:
        return
    except Exception:  # the worker's boundary fails the job with the reason; only BaseExceptions escape it
        return
    assert all(t.shape == (1, 32, 32) for t in tensors), [t.shape for t in tensors]


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
