"""Statuses a modality sees: 0xA700, 0xA900, 0xC000, 0x0122, each audited with its reason; never Success
for anything that was not stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import needs_dcmtk
from peers import dataset_bytes, raw_c_store, storescu, wait_for
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edge_ai import phantoms
from edge_ai.dicom import contexts, status

pytestmark = [pytest.mark.integration, needs_dcmtk]

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def _dx_file(folder: Path, seed: int = 11, **changes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ds, _ = phantoms.dx_case(np.random.default_rng(seed), size=128, lesion=False)
    for key, value in changes.items():
        setattr(ds, key, value)
    if "SOPClassUID" in changes:
        ds.file_meta.MediaStorageSOPClassUID = changes["SOPClassUID"]
    path = folder / f"dx-{seed}.dcm"
    phantoms.write_dataset(ds, path)
    return path


def _rejections(node: Any) -> list[dict[str, Any]]:
    return [e for e in node.audit_events() if e["event"] == "instance.rejected"]


def _nothing_stored(node: Any) -> bool:
    stored = [e for e in node.audit_events() if e["event"] == "instance.stored"]
    files = list((node.root / "var" / "spool" / "instances").rglob("*.dcm"))
    return not stored and not files


def test_low_free_space_answers_a700(node_factory: Any, tmp_path: Path) -> None:
    """Below storage.min_free_bytes storescu gets 0xA700; nothing stored; reason audited."""
    node = node_factory(extra={"storage": {"root": "var", "min_free_bytes": 2**60}}).start()
    out = storescu(node.port, [_dx_file(tmp_path)], extra=("-v",))
    assert out.returncode != 0
    assert "Refused: OutOfResources" in out.stdout + out.stderr, out.stdout + out.stderr
    rejected = wait_for(lambda: _rejections(node), 5)
    assert rejected and rejected[0]["status"] == status.OUT_OF_RESOURCES
    assert "storage.min_free_bytes" in rejected[0]["reason"]
    assert _nothing_stored(node)


def test_unwritable_spool_answers_a700(node_factory: Any, tmp_path: Path) -> None:
    """When the spool cannot be written (a file where its tmp folder was), storescu gets 0xA700."""
    node = node_factory().start()
    spool_tmp = node.root / "var" / "spool" / "tmp"
    spool_tmp.rmdir()
    spool_tmp.write_text("not a directory")
    out = storescu(node.port, [_dx_file(tmp_path)], extra=("-v",))
    assert "Refused: OutOfResources" in out.stdout + out.stderr, out.stdout + out.stderr
    rejected = wait_for(lambda: _rejections(node), 5)
    assert rejected and rejected[0]["status"] == status.OUT_OF_RESOURCES
    assert "spool unwritable" in rejected[0]["reason"]
    assert _nothing_stored(node)


def test_sop_class_differing_from_context_answers_a900(node_factory: Any, tmp_path: Path) -> None:
    """A DX data set sent on a CT context gets 0xA900 and is not stored."""
    node = node_factory().start()
    path = _dx_file(tmp_path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    code = raw_c_store(node.port, contexts.CT_IMAGE, ExplicitVRLittleEndian, contexts.CT_IMAGE,
                       ds.SOPInstanceUID, dataset_bytes(path))
    assert code == status.DATASET_MISMATCH
    rejected = wait_for(lambda: _rejections(node), 5)
    assert rejected and "differs from the presentation context" in rejected[0]["reason"]
    assert _nothing_stored(node)


@pytest.mark.parametrize("garbage", [b"\x00" * 7, b"not DICOM at all" * 64, b"\x08\x00\x16\x00UI\xff\xff"],
                         ids=["short", "text", "bad-length"])
def test_unparseable_data_set_answers_c000(node_factory: Any, garbage: bytes) -> None:
    """Bytes that are not a DICOM data set get 0xC000 (Cannot Understand), audited, not stored."""
    node = node_factory().start()
    code = raw_c_store(node.port, contexts.CT_IMAGE, ExplicitVRLittleEndian, contexts.CT_IMAGE,
                       generate_uid(), garbage)
    assert code == status.CANNOT_UNDERSTAND
    rejected = wait_for(lambda: _rejections(node), 5)
    assert rejected and rejected[0]["status"] == status.CANNOT_UNDERSTAND and rejected[0]["reason"]
    assert _nothing_stored(node)
    assert wait_for(lambda: node.proc.poll() is None, 1), "the node keeps serving"


def test_unsupported_sop_class_answers_0122(node_factory: Any, tmp_path: Path) -> None:
    """A C-STORE naming a SOP class that is not a storage class (a query) gets 0x0122; an MR image, which
    the node stores without analysing it, is accepted from storescu."""
    node = node_factory().start()
    path = _dx_file(tmp_path, SOPClassUID=MR_IMAGE, Modality="MR")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    query = "1.2.840.10008.5.1.4.1.2.1.1"  # Patient Root Query/Retrieve - FIND
    code = raw_c_store(node.port, contexts.CT_IMAGE, ExplicitVRLittleEndian, query,
                       ds.SOPInstanceUID, dataset_bytes(path))
    assert code == status.SOP_CLASS_NOT_SUPPORTED
    rejected = wait_for(lambda: _rejections(node), 5)
    assert rejected and "not a storage SOP class" in rejected[0]["reason"]
    assert _nothing_stored(node)

    out = storescu(node.port, [path])
    assert out.returncode == 0, out.stderr
    assert wait_for(lambda: [e for e in node.audit_events() if e["event"] == "instance.stored"
                             and e["sop_class_uid"] == MR_IMAGE], 5)


def test_missing_uids_answer_c000(node_factory: Any, tmp_path: Path) -> None:
    """A data set without a SOP Instance UID is refused with 0xC000, not stored."""
    node = node_factory().start()
    path = _dx_file(tmp_path, SOPInstanceUID="")
    code = raw_c_store(node.port, contexts.DX_PRESENTATION, ExplicitVRLittleEndian, contexts.DX_PRESENTATION,
                       "1.2.3", dataset_bytes(path))
    assert code == status.CANNOT_UNDERSTAND
    assert _nothing_stored(node)
