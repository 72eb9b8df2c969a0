"""edge_ai.spool.retention: delivered series lose their images after storage.retention_days; nothing else does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_state import State
from pydicom.uid import generate_uid
from test_ingest import ct_part10
from test_jobs import report

from edge_ai.dicom.contexts import CT_IMAGE
from edge_ai.spool.ingest import Stored
from edge_ai.spool.retention import DAY_S, purge


@pytest.fixture
def st(tmp_path: Path) -> Iterator[State]:
    state = State(tmp_path)
    yield state
    state.close()


def _series(st: State, assoc: str, n: int = 3) -> list[Stored]:
    series, study = generate_uid(), generate_uid()
    out = []
    for _ in range(n):
        part10, dataset, _ = ct_part10(SeriesInstanceUID=series, StudyInstanceUID=study)
        out.append(st.ingest.store(part10, dataset, CT_IMAGE, assoc))
    st.release(assoc)
    return out


def _to(st: State, state: str) -> None:
    """Take the one ready job to `state`: delivered, failed (dead letter) or reported (delivery pending)."""
    job = st.jobs.claim_ready()
    assert job is not None
    st.deliveries.report(job.id, [report(generate_uid())], [["results"]])
    (delivery,) = st.deliveries.due()
    if state == "delivered":
        st.deliveries.done(delivery)
    elif state == "failed":
        st.deliveries.dead(delivery, "association rejected")


def test_only_delivered_series_past_retention_lose_their_files(st: State) -> None:
    """Delivered: files deleted, index rows kept, audited. Failed (dead letter) and still-pending series, and
    anything younger than retention_days, keep every file."""
    stored = {}
    for name in ("delivered", "failed", "reported"):
        stored[name] = _series(st, f"assoc-{name}")
        _to(st, name)
    audit: list[tuple[str, dict[str, Any]]] = []
    record = lambda event, **fields: audit.append((event, fields))  # noqa: E731

    assert purge(st.index, 7, record, now=time.time() + 6 * DAY_S).series == 0
    assert all(Path(s.ref.path).exists() for group in stored.values() for s in group)

    done = purge(st.index, 7, record, now=time.time() + 8 * DAY_S)
    assert (done.series, done.instances) == (1, 3) and done.bytes == sum(s.ref.size for s in stored["delivered"])
    assert not any(Path(s.ref.path).exists() for s in stored["delivered"])
    assert all(Path(s.ref.path).exists() for name in ("failed", "reported") for s in stored[name])
    # the purged series' image records (~1 KB each) go with its files; the others' stay
    images = dict(st.stores.db.conn.execute(
        "SELECT s.series_uid, COUNT(g.instance_id) FROM series s JOIN instances i ON i.series_id=s.id"
        " LEFT JOIN images g ON g.instance_id=i.id GROUP BY s.id").fetchall())
    assert images == {group[0].ref.series_instance_uid: 0 if name == "delivered" else 3
                      for name, group in stored.items()}
    assert [e for e, _ in audit] == ["spool.purged"]
    assert audit[0][1]["series_uid"] == stored["delivered"][0].ref.series_instance_uid
    assert purge(st.index, 7, record, now=time.time() + 9 * DAY_S).series == 0  # once only


def test_a_resend_after_purge_is_a_known_duplicate_and_zero_days_keeps_everything(st: State) -> None:
    """retention_days 0 never deletes; after a purge, the same instance sent again is acknowledged as a
    duplicate (no second SR for unchanged content) and not kept."""
    part10, dataset, _ = ct_part10()
    first = st.ingest.store(part10, dataset, CT_IMAGE, "assoc-1")
    st.release("assoc-1")
    _to(st, "delivered")
    assert purge(st.index, 0, lambda *a, **k: None, now=time.time() + 3650 * DAY_S).series == 0
    assert Path(first.ref.path).exists()
    purge(st.index, 7, lambda *a, **k: None, now=time.time() + 8 * DAY_S)
    assert not Path(first.ref.path).exists()
    again = st.ingest.store(part10, dataset, CT_IMAGE, "assoc-2")
    assert again.outcome.duplicate and not Path(again.ref.path).exists()
    assert st.jobs.claim_ready() is None and st.release("assoc-2") == 0


def test_an_instance_arriving_while_the_purge_runs_is_kept_and_processed(st: State,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The purge picks a series, then a late instance of it is acknowledged before its files are listed:
    the series is no longer purgeable, nothing of it is deleted, and the late instance's job sees it."""
    series = _series(st, "assoc-1")
    _to(st, "delivered")
    picked = st.index.purgeable_series
    late: list[Stored] = []

    def then_a_late_instance(before: float, limit: int = 100) -> list[tuple[int, str]]:
        out = picked(before, limit)
        part10, dataset, _ = ct_part10(SeriesInstanceUID=series[0].ref.series_instance_uid,
                                       StudyInstanceUID=series[0].ref.study_instance_uid)
        late.append(st.ingest.store(part10, dataset, CT_IMAGE, "assoc-2"))
        return out

    monkeypatch.setattr(st.index, "purgeable_series", then_a_late_instance)
    assert purge(st.index, 7, lambda *a, **k: None, now=time.time() + 8 * DAY_S).series == 0
    assert all(Path(s.ref.path).exists() for s in [*series, *late])
    st.release("assoc-2")
    job = st.jobs.claim_ready()
    assert job is not None and len(st.index.series_instances(job.series_id)) == 4


def test_a_purged_file_that_a_crash_brought_back_is_removed_at_start(st: State, tmp_path: Path) -> None:
    """If the delete was lost (power cut after the index commit), recovery removes the file instead of
    leaving it on disk for good."""
    part10, dataset, _ = ct_part10()
    stored = st.ingest.store(part10, dataset, CT_IMAGE, "assoc-1")
    st.release("assoc-1")
    _to(st, "delivered")
    purge(st.index, 7, lambda *a, **k: None, now=time.time() + 8 * DAY_S)
    Path(stored.ref.path).write_bytes(part10)  # the unlink a crash undid
    assert st.ingest.recover_orphans() == []
    assert not Path(stored.ref.path).exists()


def test_a_bounded_step_leaves_the_rest_for_the_next(st: State) -> None:
    """With no time budget left, a call purges nothing more and says there is more to do."""
    for n in range(2):
        _series(st, f"assoc-{n}", n=1)
        _to(st, "delivered")
    first = purge(st.index, 7, lambda *a, **k: None, now=time.time() + 8 * DAY_S, budget_s=-1)
    assert first.more and first.series == 0
    rest = purge(st.index, 7, lambda *a, **k: None, now=time.time() + 8 * DAY_S)
    assert rest.series == 2 and not rest.more
