"""HTTP bodies into the spool (edge_ai.http.body): what a sender of one or many instances gets back."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from edge_ai import phantoms
from edge_ai.errors import Refusal
from edge_ai.http.body import BodyIngest, Outcome
from edge_ai.http.problems import Problem
from edge_ai.service.stores import open_stores
from edge_ai.spool.ingest import Ingest
from edge_ai.spool.store import Spool

BOUNDARY = "xyzzy"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    stores = open_stores(tmp_path)
    yield Ingest(Spool(tmp_path / "spool"), stores.db, stores.index, stores.jobs, 0)
    stores.close()


def _dx(seed: int = 1, compress: bool = False) -> bytes:
    ds, _ = phantoms.dx_case(np.random.default_rng(seed), size=256, lesion=True)
    if compress:
        ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _multipart(*parts: bytes, types: tuple[str, ...] = ()) -> bytes:
    out = b""
    for i, part in enumerate(parts):
        kind = types[i] if i < len(types) else "application/dicom"
        out += f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _send(ingest: Ingest, body: bytes, content_type: str, chunk: int = 7001, pooled: bool = False) -> list[Outcome]:
    pool = ThreadPoolExecutor(4) if pooled else None
    sink = BodyIngest(ingest, "h-test", content_type, pool=pool)
    sink.feed(body[i:i + chunk] for i in range(0, len(body), chunk))
    return sink.close()


def _leftovers(ingest: Ingest) -> list[Path]:
    """Temporary files and stored instances in the spool."""
    spool = ingest.spool
    return [p for folder in (spool.tmp, spool.instances) for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("compress", [False, True])
def test_one_instance_is_kept_byte_for_byte(ingest: Ingest, compress: bool) -> None:
    """The spool keeps exactly the Part-10 bytes that were posted (no re-encoding), uncompressed or RLE."""
    body = _dx(compress=compress)
    [outcome] = _send(ingest, body, "application/dicom")
    assert outcome.ok and outcome.refusal is None
    [ref] = ingest.index.series_instances(1)
    assert Path(ref.path).read_bytes() == body and ref.sha256 == outcome.sha256


@pytest.mark.parametrize("pooled", [False, True])
def test_multipart_stores_the_good_parts_and_names_the_bad(ingest: Ingest, pooled: bool) -> None:
    """In a multipart body, good instances are stored and each bad part gets its own reason, in body order."""
    good1, good2 = _dx(1), _dx(2)
    body = _multipart(good1, b"\xff\xd8\xff\xe0 jpeg" + bytes(300), good2, b'{"json": 1}',
                      types=("application/dicom", "application/dicom", "application/dicom", "application/json"))
    outcomes = _send(ingest, body, MULTIPART, pooled=pooled)
    assert [o.ok for o in outcomes] == [True, False, True, False]
    assert [o.index for o in outcomes] == [0, 1, 2, 3]
    assert "JPEG" in outcomes[1].refusal.reason  # type: ignore[union-attr]
    assert "application/json" in outcomes[3].refusal.reason  # type: ignore[union-attr]
    assert len(ingest.index.series_instances(1)) + len(ingest.index.series_instances(2)) == 2


@pytest.mark.parametrize("cut", [100, 140, 400, 2000, -5000, -1])
def test_a_body_cut_short_anywhere_is_refused_and_leaves_nothing(ingest: Ingest, cut: int) -> None:
    """A body cut in its preamble, file meta, header or pixel data is refused as cut short; no file is kept."""
    body = _dx()
    [outcome] = _send(ingest, body[:cut], "application/dicom")
    assert not outcome.ok and outcome.refusal is not None
    assert outcome.refusal.kind is Refusal.CANNOT_UNDERSTAND
    assert "cut short" in outcome.refusal.reason or "not a DICOM" in outcome.refusal.reason
    assert _leftovers(ingest) == [] and ingest.jobs.counts()["received"] == 0


def test_a_compressed_body_cut_inside_its_fragments_is_refused(ingest: Ingest) -> None:
    """Encapsulated pixel data without its closing delimiter is a body cut short."""
    body = _dx(compress=True)
    [outcome] = _send(ingest, body[:-6], "application/dicom")
    assert outcome.refusal is not None and "cut short" in outcome.refusal.reason


@pytest.mark.parametrize("body,words", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(400), "JPEG"),
    (b"Hello, this is a letter, not an image.\n" * 10, "text"),
    (b"\x89PNG\r\n\x1a\n" + bytes(300), "PNG"),
    (b"", "empty"),
])
def test_what_is_not_dicom_is_named(ingest: Ingest, body: bytes, words: str) -> None:
    """A JPEG, text, a PNG or nothing at all is refused with a reason that says which."""
    [outcome] = _send(ingest, body, "application/dicom")
    assert outcome.refusal is not None and words in outcome.refusal.reason


def test_a_sop_class_the_node_does_not_store_is_refused(ingest: Ingest) -> None:
    """A data set whose SOP class is not a storage class at all is refused as not supported."""
    ds = pydicom.dcmread(io.BytesIO(_dx()))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"  # Modality Worklist FIND
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    [outcome] = _send(ingest, buf.getvalue(), "application/dicom")
    assert outcome.refusal is not None and outcome.refusal.kind is Refusal.SOP_CLASS_NOT_SUPPORTED


def test_file_meta_and_data_set_disagreeing_is_a_mismatch(ingest: Ingest) -> None:
    """A data set whose SOP class differs from its File Meta's is refused as a mismatch (STOW 0xA900)."""
    ds = pydicom.dcmread(io.BytesIO(_dx()))
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT in the meta, DX in the data set
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    [outcome] = _send(ingest, buf.getvalue(), "application/dicom")
    assert outcome.refusal is not None and outcome.refusal.kind is Refusal.DATASET_MISMATCH


@pytest.mark.parametrize("content_type,status", [
    ("text/plain", 415), ('multipart/related; type="application/dicom+json"; boundary=x', 415),
    ('multipart/related; type="application/dicom"', 400), ("", 415),
])
def test_wrong_content_types_are_refused_before_reading(ingest: Ingest, content_type: str, status: int) -> None:
    """A content type the node cannot take is answered before any byte is read (415), or 400 without boundary."""
    with pytest.raises(Problem) as caught:
        BodyIngest(ingest, "h", content_type)
    assert caught.value.status == status


def test_a_multipart_body_without_its_closing_boundary_is_400(ingest: Ingest) -> None:
    """A multipart body that stops inside a part is a 400 and nothing of it is kept, not even the complete
    part before it: an HTTP request is acknowledged whole or not at all."""
    body = _multipart(_dx(1), _dx(2))
    sink = BodyIngest(ingest, "h", MULTIPART)
    sink.feed([body[: len(body) - 3000]])
    with pytest.raises(Problem) as caught:
        sink.close()
    assert caught.value.status == 400 and list(ingest.spool.tmp.iterdir()) == []
    assert ingest.index.series_instances(1) == [] and _leftovers(ingest) == []


def test_every_refusal_has_an_http_status_and_a_stow_failure_reason() -> None:
    """Whatever ingest refuses for, the HTTP side has an answer for it (a new kind cannot reach a client as a 500)."""
    from edge_ai.http.problems import REFUSAL_ANSWERS

    assert set(REFUSAL_ANSWERS) == set(Refusal)
    assert all(400 <= status < 600 and reason > 0 for status, reason in REFUSAL_ANSWERS.values())
