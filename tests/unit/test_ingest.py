"""edge_ai.spool.ingest: what a C-STORE gets back, and what is on disk and indexed afterwards."""

from __future__ import annotations

import errno
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from node_state import State
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edge_ai.dicom import status
from edge_ai.dicom.contexts import CT_IMAGE, DX_PRESENTATION
from edge_ai.dicom.scp import DIMSE_STATUS
from edge_ai.errors import Refusal, RejectedInstance
from edge_ai.spool import ingest as ingest_mod
from edge_ai.spool.ingest import Ingest
from edge_ai.spool.store import Spool


def ct_part10(**overrides: object) -> tuple[bytes, bytes, Dataset]:
    """A small CT image as Part-10 bytes, plus the data set bytes alone (what the SCP hashes)."""
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "ANON"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).reshape(8, 8).tobytes()
    for key, value in overrides.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CT_IMAGE)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    part10 = buf.getvalue()
    offset = 132 + 12 + pydicom.dcmread(io.BytesIO(part10)).file_meta.FileMetaInformationGroupLength
    return part10, part10[offset:], ds


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[State]:
    state = State(tmp_path)
    yield state
    state.close()


@pytest.fixture
def ingest(queue: State) -> Ingest:
    return queue.ingest


def stored_files(spool: Spool) -> list[Path]:
    return [p for p in spool.instances.rglob("*") if p.is_file()]


def indexed(queue: State) -> int:
    return queue.count("instances")


def reject(ingest: Ingest, part10: bytes, dataset: bytes | None = None, context: str = CT_IMAGE) -> int:
    with pytest.raises(RejectedInstance) as info:
        ingest.store(part10, part10 if dataset is None else dataset, context, "assoc-1")
    return DIMSE_STATUS[info.value.kind]


def test_store_keeps_the_received_bytes(ingest: Ingest, spool: Spool, queue: State) -> None:
    """A valid CT instance is stored byte for byte and indexed under its series."""
    part10, dataset, ds = ct_part10()
    stored = ingest.store(part10, dataset, CT_IMAGE, "assoc-1")
    path = Path(stored.ref.path)
    assert path.read_bytes() == part10
    assert stored_files(spool) == [path]
    assert stored.ref.sop_instance_uid == ds.SOPInstanceUID
    assert stored.ref.series_instance_uid == ds.SeriesInstanceUID
    assert stored.ref.study_instance_uid == ds.StudyInstanceUID
    assert stored.ref.size == len(part10)
    assert stored.modality == "CT"
    assert not stored.outcome.duplicate
    assert str(ds.SOPInstanceUID) not in str(path)
    assert queue.jobs.counts()["received"] == 1


def test_sop_class_differing_from_context_is_a900(ingest: Ingest, spool: Spool) -> None:
    """A CT data set sent on a DX presentation context gets 0xA900 and is not kept."""
    part10, dataset, _ = ct_part10()
    assert reject(ingest, part10, dataset, context=DX_PRESENTATION) == status.DATASET_MISMATCH == 0xA900
    assert stored_files(spool) == []


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: os.urandom(2048),
        lambda b: b"",
        lambda b: b[:100],  # inside the preamble / file meta
        lambda b: b[:200],  # inside the data set, before the identifying UIDs are complete
    ],
    ids=["random", "empty", "truncated-meta", "truncated-dataset"],
)
def test_unparseable_bytes_are_c000(ingest: Ingest, spool: Spool, queue: State, mangle: object) -> None:
    """Bytes that are not a DICOM data set get 0xC000 and nothing is stored or indexed."""
    part10, _, _ = ct_part10()
    bad = mangle(part10)  # type: ignore[operator]
    assert reject(ingest, bad) == status.CANNOT_UNDERSTAND == 0xC000
    assert stored_files(spool) == [] and indexed(queue) == 0


@pytest.mark.parametrize("missing", ["SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID"])
def test_missing_identifying_uid_is_c000(ingest: Ingest, spool: Spool, queue: State, missing: str) -> None:
    """An instance that cannot be placed in a study and series is refused with 0xC000."""
    part10, dataset, _ = ct_part10(**{missing: None})
    assert reject(ingest, part10, dataset) == 0xC000
    assert stored_files(spool) == [] and indexed(queue) == 0


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_malformed_uid_is_c000(ingest: Ingest, spool: Spool) -> None:
    """A UID with letters or path characters is refused rather than stored."""
    part10, dataset, _ = ct_part10(SeriesInstanceUID="1.2.3/../../x")
    assert reject(ingest, part10, dataset) == 0xC000
    assert stored_files(spool) == []


def test_low_disk_space_is_a700_and_nothing_written(spool: Spool, queue: State) -> None:
    """Below storage.min_free_bytes the C-STORE answers 0xA700 and writes nothing."""
    ingest = Ingest(spool, queue.stores.db, queue.index, queue.jobs, min_free_bytes=spool.free_bytes() + 10**12)
    part10, dataset, _ = ct_part10()
    assert reject(ingest, part10, dataset) == status.OUT_OF_RESOURCES == 0xA700
    assert stored_files(spool) == [] and list(spool.tmp.iterdir()) == [] and indexed(queue) == 0


@pytest.mark.parametrize("where", ["while the data set arrives", "at fsync"])
def test_disk_full_during_write_is_a700_and_nothing_indexed(
    ingest: Ingest, spool: Spool, queue: State, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A write or fsync that hits ENOSPC answers 0xA700; the instance is neither on disk, nor left in
    tmp, nor in the index."""

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    part10, dataset, _ = ct_part10()
    receiving = ingest.receive(part10[:len(part10) - len(dataset)], CT_IMAGE, "assoc-1")
    if where == "at fsync":
        monkeypatch.setattr(os, "fsync", full)
    else:
        monkeypatch.setattr("edge_ai.spool.ingest.write_all", full)
    receiving.write(memoryview(dataset))
    with pytest.raises(RejectedInstance) as info:
        receiving.finish()
    assert info.value.kind == Refusal.OUT_OF_RESOURCES and "disk full" in info.value.reason
    assert stored_files(spool) == [] and list(spool.tmp.iterdir()) == [] and indexed(queue) == 0


def test_streamed_instance_is_the_same_file_as_one_stored_whole(ingest: Ingest, spool: Spool) -> None:
    """Fed in 7-byte fragments, the spool keeps exactly the received bytes under the same content hash."""
    part10, dataset, _ = ct_part10()
    receiving = ingest.receive(part10[:len(part10) - len(dataset)], CT_IMAGE, "assoc-1")
    for i in range(0, len(dataset), 7):
        receiving.write(memoryview(dataset)[i:i + 7])
    stored = receiving.finish()
    assert Path(stored.ref.path).read_bytes() == part10
    assert stored.ref.size == len(part10) and list(spool.tmp.iterdir()) == []


def test_data_set_above_max_instance_bytes_is_refused_while_it_arrives(spool: Spool, queue: State) -> None:
    """A data set whose encoded size passes storage.max_instance_bytes stops being written at that
    point (memory and disk stay flat) and is answered 0xC000 naming the key."""
    part10, dataset, _ = ct_part10()
    ingest = Ingest(spool, queue.stores.db, queue.index, queue.jobs, min_free_bytes=0, max_instance_bytes=64)
    receiving = ingest.receive(part10[:len(part10) - len(dataset)], CT_IMAGE, "assoc-1")
    receiving.write(memoryview(dataset))
    assert list(spool.tmp.iterdir()) == []
    with pytest.raises(RejectedInstance) as info:
        receiving.finish()
    assert info.value.kind == Refusal.CANNOT_UNDERSTAND and "storage.max_instance_bytes" in info.value.reason
    assert stored_files(spool) == [] and indexed(queue) == 0


def test_unwritable_spool_is_a700_and_nothing_indexed(ingest: Ingest, spool: Spool, queue: State) -> None:
    """A spool whose instances folder cannot be written (a file in its place) answers 0xA700."""
    shutil.rmtree(spool.instances)
    spool.instances.write_bytes(b"")
    part10, dataset, _ = ct_part10()
    assert reject(ingest, part10, dataset) == 0xA700
    assert indexed(queue) == 0
    assert list(spool.tmp.iterdir()) == []


def test_same_instance_twice_is_stored_once(ingest: Ingest, spool: Spool, queue: State) -> None:
    """A resend of the same instance is acknowledged but kept and indexed only once."""
    part10, dataset, _ = ct_part10()
    first = ingest.store(part10, dataset, CT_IMAGE, "assoc-1")
    second = ingest.store(part10, dataset, CT_IMAGE, "assoc-2")
    assert not first.outcome.duplicate and second.outcome.duplicate
    assert second.ref.path == first.ref.path
    assert len(stored_files(spool)) == 1 and indexed(queue) == 1


def test_same_uid_with_changed_content_is_kept_as_new_version(ingest: Ingest, spool: Spool) -> None:
    """A corrected resend (same UID, other pixels) is stored beside the first, not over it."""
    part10, dataset, ds = ct_part10()
    ingest.store(part10, dataset, CT_IMAGE, "assoc-1")
    changed, changed_ds, _ = ct_part10(
        SOPInstanceUID=ds.SOPInstanceUID, StudyInstanceUID=ds.StudyInstanceUID,
        SeriesInstanceUID=ds.SeriesInstanceUID, PixelData=bytes(128),
    )
    second = ingest.store(changed, changed_ds, CT_IMAGE, "assoc-1")
    assert second.outcome.conflict and not second.outcome.duplicate
    assert len(stored_files(spool)) == 2
    assert Path(second.ref.path).read_bytes() == changed


def test_a_failed_concurrent_store_of_the_same_instance_never_removes_the_acknowledged_one(
    ingest: Ingest, spool: Spool, queue: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two associations storing one instance at once both pass the duplicate check; when the second one's
    fsync fails, the first one's acknowledged file is still there, whole."""
    part10, dataset, _ = ct_part10()
    prefix = part10[:len(part10) - len(dataset)]
    first = ingest.receive(prefix, CT_IMAGE, "assoc-1")
    second = ingest.receive(prefix, CT_IMAGE, "assoc-2")
    first.write(memoryview(dataset))
    second.write(memoryview(dataset))
    acknowledged = first.finish()
    monkeypatch.setattr(queue.index, "has_instance", lambda *a: False)  # it checked before the first committed

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(RejectedInstance):
        second.finish()
    assert Path(acknowledged.ref.path).read_bytes() == part10


def test_a_deflate_bomb_is_refused_without_inflating_it_whole(spool: Spool, queue: State) -> None:
    """A deflated data set of a few kilobytes that inflates to 16 MiB is refused (0xC000, naming
    storage.max_instance_bytes) when the limit is 8 MiB; a deflated instance under the limit is stored."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    def deflated(extra_bytes: int) -> tuple[bytes, bytes]:
        _, _, ds = ct_part10()
        ds.private_block(0x0009, "EDGE_AI TEST", create=True).add_new(0x01, "OB", bytes(extra_bytes))
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        raw = buf.getvalue()
        return raw, raw[ingest_mod.dataset_offset(raw):]

    ingest = Ingest(spool, queue.stores.db, queue.index, queue.jobs, min_free_bytes=0,
                    max_instance_bytes=8 * 1024 * 1024)
    bomb, bomb_set = deflated(16 * 1024 * 1024)
    assert len(bomb) < 100_000
    with pytest.raises(RejectedInstance) as info:
        ingest.store(bomb, bomb_set, CT_IMAGE, "assoc-1")
    assert info.value.kind == Refusal.CANNOT_UNDERSTAND and "storage.max_instance_bytes" in info.value.reason
    assert stored_files(spool) == [] and indexed(queue) == 0
    fine, fine_set = deflated(1024)
    assert not ingest.store(fine, fine_set, CT_IMAGE, "assoc-1").outcome.duplicate
    # 50 bytes over the limit, most of them in zlib's last buffered output, are still over the limit
    import zlib

    base = len(zlib.decompress(deflated(0)[1], -zlib.MAX_WBITS))
    over, over_set = deflated(8 * 1024 * 1024 - base + 50)
    with pytest.raises(RejectedInstance) as info:
        ingest.store(over, over_set, CT_IMAGE, "assoc-1")
    assert "storage.max_instance_bytes" in info.value.reason
    # and a cut-off stream is refused rather than stored
    with pytest.raises(RejectedInstance) as info:
        ingest.store(fine[:-20], fine_set[:-20], CT_IMAGE, "assoc-1")
    assert info.value.kind == Refusal.CANNOT_UNDERSTAND
