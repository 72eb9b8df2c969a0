"""edge_ai.dicom.scp: what one C-STORE turns into (status, spool, audit), without a network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_state import State
from test_ingest import ct_part10

from edge_ai.config import Node
from edge_ai.dicom import pdu, status
from edge_ai.dicom.contexts import CT_IMAGE, DX_PRESENTATION
from edge_ai.dicom.scp import StorageSCP
from edge_ai.dicom.transport import Association
from edge_ai.spool.ingest import Ingest


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **_: self.events.append(f"{level}:{event}")


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    state = State(tmp_path)
    yield state.ingest
    state.close()


def _store(scp: StorageSCP, context: str, affected: str, sop_instance_uid: str, data: bytes) -> tuple[int, str]:
    command = pdu.Command(command_field=pdu.C_STORE_RQ, message_id=1, sop_class_uid=affected,
                          sop_instance_uid=sop_instance_uid, data_set_type=0)
    sink = scp.begin_store(Association("a1", "10.1.2.3", 4000, calling_ae="CT_1"), command, context,
                           "1.2.840.10008.1.2.1")
    sink.write(memoryview(data))
    return sink.finish()


def test_an_audit_that_fails_after_the_store_still_answers_success(ingest: Ingest) -> None:
    """The instance is durable and indexed, so the modality gets Success; the failed audit line is logged."""
    log = _Log()

    def audit(event: str, **_: Any) -> None:
        if event == "instance.stored":
            raise OSError(28, "No space left on device")

    scp = StorageSCP(Node(), ingest, audit, log)
    _, dataset, ds = ct_part10()
    assert _store(scp, CT_IMAGE, CT_IMAGE, ds.SOPInstanceUID, dataset) == (status.SUCCESS, "")
    (path,) = ingest.index.instance_paths()
    assert Path(path).exists()
    assert "exception:audit_write_failed" in log.events


@pytest.mark.parametrize("context,affected,uid,code", [
    (CT_IMAGE, DX_PRESENTATION, "1.2.3", status.DATASET_MISMATCH),
    (CT_IMAGE, CT_IMAGE, "1.2.3", status.DATASET_MISMATCH),  # not the data set's SOP Instance UID
    (CT_IMAGE, CT_IMAGE, "1.2.3/../x", status.CANNOT_UNDERSTAND),
    (CT_IMAGE, CT_IMAGE, "", status.CANNOT_UNDERSTAND),
    (CT_IMAGE, "1.2.840.10008.5.1.4.1.2.1.1", "1.2.3", status.SOP_CLASS_NOT_SUPPORTED),  # a query, not storage
])
def test_a_request_refused_on_its_command_writes_nothing(ingest: Ingest, context: str, affected: str, uid: str,
                                                          code: int) -> None:
    """A C-STORE whose own command is wrong (or disagrees with its data set) is refused with the status
    and reason; nothing reaches disk."""
    events: list[tuple[str, dict[str, Any]]] = []
    scp = StorageSCP(Node(), ingest, lambda e, **f: events.append((e, f)), _Log())
    _, dataset, _ = ct_part10()
    got, reason = _store(scp, context, affected, uid, dataset)
    assert got == code and reason
    assert not list(ingest.spool.tmp.iterdir()) and not list(ingest.spool.instances.rglob("*.dcm"))
    assert [e for e, f in events if e == "instance.rejected" and f["status"] == code]
