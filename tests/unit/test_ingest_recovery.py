"""Start-up recovery: acknowledged spool files that the index lost (power cut) are indexed again."""

from __future__ import annotations

from pathlib import Path

from node_state import State
from test_ingest import ct_part10

from edge_ai.dicom.contexts import CT_IMAGE
from edge_ai.spool.ingest import dataset_offset


def _state(root: Path, db: str = "queue.sqlite3") -> State:
    return State(root, db=db)


def test_dataset_offset_matches_what_the_scp_hashes() -> None:
    """The data set found in a stored file is exactly the data set bytes the SCP hashed on receipt."""
    part10, dataset, _ = ct_part10()
    assert part10[dataset_offset(part10):] == dataset


def test_files_missing_from_the_index_are_indexed_again(tmp_path: Path) -> None:
    """A stored instance whose index row was rolled back is back in its series' job after recovery."""
    first = _state(tmp_path)
    part10, dataset, ds = ct_part10()
    stored = first.ingest.store(part10, dataset, CT_IMAGE, "a1")
    first.close()
    # the index as a power cut could leave it: without the last rows
    after = _state(tmp_path, db="rolled-back.sqlite3")
    assert after.ingest.recover_orphans() == []
    refs = after.index.series_instances(1)
    assert [(r.sop_instance_uid, r.sha256, r.path) for r in refs] == [
        (ds.SOPInstanceUID, stored.ref.sha256, stored.ref.path)]
    assert after.jobs.counts()["received"] == 1
    assert after.ingest.recover_orphans() == []  # idempotent
    assert len(after.index.series_instances(1)) == 1


def test_a_damaged_file_is_reported_not_indexed(tmp_path: Path) -> None:
    """A spool file whose bytes no longer match its name (damaged since it was stored) is reported,
    moved to quarantine and left out of the index."""
    first = _state(tmp_path)
    part10, dataset, _ = ct_part10()
    stored = first.ingest.store(part10, dataset, CT_IMAGE, "a1")
    first.close()
    path = Path(stored.ref.path)
    path.write_bytes(path.read_bytes()[:-10] + b"\x00" * 10)
    after = _state(tmp_path, db="rolled-back.sqlite3")
    problems = after.ingest.recover_orphans()
    assert len(problems) == 1 and "does not match" in problems[0] and "quarantine" in problems[0]
    assert after.index.instance_paths() == set()
    assert not path.exists() and (tmp_path / "spool" / "quarantine" / path.name).exists()
    assert after.ingest.recover_orphans() == []  # reported once, not at every start
