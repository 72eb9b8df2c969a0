"""edge_ai.grouping.jobs and edge_ai.outbox.deliveries: the job life cycle, its transition table, reports
and deliveries, on a real SQLite file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_state import State

from edge_ai.domain import InstanceRef, JobState
from edge_ai.grouping.jobs import TRANSITIONS, InvalidTransition, JobEvent, ReportRow

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.2"
CT = "1.2.840.10008.5.1.4.1.1.2"

Event = tuple[int, str, JobState, str]


def ref(n: int, series: str = SERIES, sha: str | None = None) -> InstanceRef:
    return InstanceRef(
        sop_class_uid=CT,
        sop_instance_uid=f"{series}.{n}",
        series_instance_uid=series,
        study_instance_uid=STUDY,
        path=f"/spool/{n}.dcm",
        sha256=sha or f"{n:064x}",
        size=100 + n,
    )


def report(job_sr: str, model: str = "demo-ct-lesion") -> ReportRow:
    path = f"/spool/reports/{job_sr}.dcm"
    return ReportRow(model, "1.0", "onnxruntime", job_sr, "1.2.3.999", path, True, 0.9)


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def st(tmp_path: Path, events: list[Event]) -> Iterator[State]:
    state = State(tmp_path, listener=lambda *e: events.append(e))
    yield state
    state.close()


def claimed(st: State, n: int = 1, carrier: str = "a") -> int:
    """A series of n instances, released and claimed: its job id, now inferring."""
    outcomes = [st.add(ref(i), carrier) for i in range(n)]
    job_id = outcomes[0].job_id
    st.release(carrier)
    job = st.jobs.claim_ready()
    assert job is not None and job.id == job_id
    return job_id


def test_full_life_of_a_series_reaches_delivered(st: State, events: list[Event]) -> None:
    """received -> ready on release -> inferring -> reported -> delivered, and the listener sees each step."""
    out = [st.add(ref(i)) for i in range(3)]
    job_id = out[0].job_id
    assert {o.job_id for o in out} == {job_id} and not any(o.duplicate or o.reopened for o in out)
    assert st.state(job_id) == "received"
    assert st.jobs.claim_ready() is None  # nothing is inferred while the association is still open

    assert st.release("a") == 1
    assert st.state(job_id) == "ready"

    job = st.jobs.claim_ready()
    assert job is not None and job.id == job_id and job.series_uid == SERIES and job.study_uid == STUDY
    assert job.modality == "CT" and job.generation == 1 and job.state is JobState.INFERRING
    assert st.jobs.claim_ready() is None  # one worker per job
    uids = [r.sop_instance_uid for r in st.index.series_instances(job.series_id)]
    assert uids == [f"{SERIES}.{i}" for i in range(3)]

    st.deliveries.report(job_id, [report("1.2.3.100")], [["results", "pacs"]])
    assert st.state(job_id) == "reported"
    due = st.deliveries.due()
    assert sorted(d.destination for d in due) == ["pacs", "results"]
    st.deliveries.done(due[0])
    assert st.state(job_id) == "reported"  # one destination still pending
    st.deliveries.done(due[1])
    assert st.state(job_id) == "delivered"
    assert st.deliveries.due() == [] and st.deliveries.next_at() is None

    life = (JobState.RECEIVED, JobState.READY, JobState.INFERRING, JobState.REPORTED, JobState.DELIVERED)
    assert [(e[0], e[1], e[2]) for e in events] == [(job_id, SERIES, s) for s in life]
    assert st.jobs.counts()["delivered"] == 1


def test_a_series_with_nothing_to_deliver_is_delivered_at_once(st: State) -> None:
    """A series no route analyses (an MR in a CT study) ends delivered, so retention can clear it."""
    job_id = claimed(st)
    st.deliveries.report(job_id, [], [])
    assert st.state(job_id) == "delivered"


def test_more_instances_after_ready_hold_the_series_back(st: State, events: list[Event]) -> None:
    """An instance that arrives after release but before inference sends the job back to waiting."""
    job_id = st.add(ref(1), "a").job_id
    st.release("a")
    again = st.add(ref(2), "b")
    assert again.job_id == job_id and not again.reopened
    assert st.state(job_id) == "received"
    assert events[-1][2] is JobState.RECEIVED and events[-1][3] == "more instances arrived"
    assert st.jobs.claim_ready() is None


def test_recover_after_restart_puts_inferring_jobs_back_to_ready(tmp_path: Path) -> None:
    """A job caught mid-inference by a crash is picked up again after restart, not lost."""
    first = State(tmp_path)
    job_id = claimed(first)
    first.close()

    seen: list[Event] = []
    second = State(tmp_path, listener=lambda *e: seen.append(e))
    try:
        assert second.jobs.recover() == 1
        assert seen == [(job_id, SERIES, JobState.READY, "resumed after restart")]
        again = second.jobs.claim_ready()
        assert again is not None and again.id == job_id
        assert second.jobs.recover() == 1 and second.jobs.recover() == 0
    finally:
        second.close()


def test_duplicate_instance_is_stored_once(st: State) -> None:
    """The same SOP Instance UID with the same bytes is recognised and indexed once."""
    first = st.add(ref(1), "a")
    second = st.add(ref(1), "b")
    assert second.duplicate and not second.conflict and second.job_id == first.job_id
    assert st.index.has_instance(f"{SERIES}.1", f"{1:064x}")
    st.release("a")
    st.release("b")
    job = st.jobs.claim_ready()
    assert job is not None and len(st.index.series_instances(job.series_id)) == 1


def test_same_uid_other_bytes_is_a_conflict_and_latest_version_wins(st: State) -> None:
    """A resend with changed content is kept as a new version; inference sees only the latest."""
    st.add(ref(1))
    st.add(ref(2))
    changed = st.add(ref(1, sha="f" * 64))
    assert changed.conflict and not changed.duplicate
    st.release("a")
    job = st.jobs.claim_ready()
    assert job is not None
    latest = [(i.sop_instance_uid, i.sha256) for i in st.index.series_instances(job.series_id)]
    assert latest == [(f"{SERIES}.2", f"{2:064x}"), (f"{SERIES}.1", "f" * 64)]


def test_late_instance_opens_generation_two_with_predecessor(st: State) -> None:
    """An instance after inference started reopens the series; the new job can name the earlier SR."""
    gen1 = claimed(st)
    late = st.add(ref(2), "b")
    assert late.reopened and late.job_id != gen1
    assert st.state(gen1) == "inferring"
    st.deliveries.report(gen1, [report("1.2.3.100")], [["results"]])

    st.release("b")
    gen2 = st.jobs.claim_ready()
    assert gen2 is not None and gen2.id == late.job_id and gen2.generation == 2
    assert len(st.index.series_instances(gen2.series_id)) == 2
    assert st.jobs.previous_report(gen2.series_id, "demo-ct-lesion", gen2.id) == ("1.2.3.100", "1.2.3.999")
    assert st.jobs.previous_report(gen2.series_id, "other-model", gen2.id) is None


def test_dead_letter_fails_the_job_with_reason(st: State) -> None:
    """A delivery given up on fails the job with a 'dead letter' reason and is listed in dead letters."""
    job_id = claimed(st)
    st.deliveries.report(job_id, [report("1.2.3.100")], [["results", "pacs"]])
    by_dest = {d.destination: d for d in st.deliveries.due()}
    st.deliveries.dead(by_dest["pacs"], "status 0xA900")
    assert st.state(job_id) == "reported"  # results still pending
    st.deliveries.done(by_dest["results"])
    assert st.state(job_id) == "failed"
    failed = st.jobs.failed_jobs()
    assert len(failed) == 1 and str(failed[0]["reason"]).startswith("dead letter")
    assert "pacs" in str(failed[0]["reason"]) and "0xA900" in str(failed[0]["reason"])
    dead = st.deliveries.dead_letters()
    assert [(d["destination"], d["reason"], d["sop_instance_uid"]) for d in dead] == [
        ("pacs", "status 0xA900", "1.2.3.100")
    ]


def test_retry_of_a_dead_lettered_job_runs_it_again_and_can_deliver(st: State) -> None:
    """An operator's retry requeues a failed job; its old dead letter no longer fails the new attempt."""
    job_id = claimed(st)
    st.deliveries.report(job_id, [report("1.2.3.100")], [["pacs"]])
    (d,) = st.deliveries.due()
    st.deliveries.dead(d, "refused")
    assert st.state(job_id) == "failed"
    assert st.deliveries.retry_job(job_id) is True
    assert st.state(job_id) == "ready" and st.deliveries.dead_letters() == []
    assert st.deliveries.retry_job(job_id) is False  # only a failed job can be retried
    job = st.jobs.claim_ready()
    assert job is not None and job.id == job_id
    st.deliveries.report(job_id, [report("1.2.3.100")], [["pacs"]])
    (again,) = st.deliveries.due()
    st.deliveries.done(again)
    assert st.state(job_id) == "delivered"


def test_retry_postpones_delivery(st: State) -> None:
    """A retried delivery is not due again until its next_at, and its attempts are counted."""
    job_id = claimed(st)
    st.deliveries.report(job_id, [report("1.2.3.100")], [["pacs"]])
    (d,) = st.deliveries.due()
    st.deliveries.retry(d, "refused", time.time() + 60)
    assert st.deliveries.due() == []
    (again,) = st.deliveries.due(now=time.time() + 61)
    assert again.attempts == 1


def test_fail_job_records_reason(st: State, events: list[Event]) -> None:
    """A job that cannot be processed is failed with its reason, visible in status and to the listener."""
    job_id = claimed(st)
    st.jobs.fail(job_id, "pixel data cannot be decoded")
    assert st.jobs.failed_jobs()[0]["reason"] == "pixel data cannot be decoded"
    assert events[-1] == (job_id, SERIES, JobState.FAILED, "pixel data cannot be decoded")


def test_listener_not_told_of_rolled_back_changes(st: State, events: list[Event]) -> None:
    """A transaction that fails announces nothing, so the audit never records a change that did not happen."""
    job_id = claimed(st)
    count = len(events)
    with pytest.raises(ValueError):
        st.deliveries.report(job_id, [report("1.2.3.100")], [])  # lengths differ: zip(strict=True) raises
    assert len(events) == count
    assert st.state(job_id) == "inferring" and st.count("reports") == 0


def test_a_listener_failing_after_commit_neither_undoes_nor_fails_the_change(tmp_path: Path) -> None:
    """When the audit cannot record a job's change (its volume full), the change stands, the caller goes
    on (ingest answers Success, the worker reports), and the failure is reported."""
    errors: list[BaseException] = []

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    st = State(tmp_path, listener=full, on_error=errors.append)
    try:
        outcome = st.add(ref(1))  # does not raise
        st.release("a")
        job = st.jobs.claim_ready()
        assert job is not None and job.id == outcome.job_id
        st.deliveries.report(job.id, [], [])
        assert st.state(job.id) == "delivered"
        assert len(errors) == 5 and all(isinstance(e, OSError) for e in errors)
    finally:
        st.close()


# ---- the transition table: one test per row, and everything else refused ---------------------------
def _job_in(st: State, state: JobState) -> int:
    """A job brought to `state` through the table's own transitions."""
    job_id = st.add(ref(1)).job_id
    if state is JobState.RECEIVED:
        return job_id
    st.release("a")
    if state is JobState.READY:
        return job_id
    assert st.jobs.claim_ready() is not None
    if state is JobState.INFERRING:
        return job_id
    if state is JobState.FAILED:
        st.jobs.fail(job_id, "x")
        return job_id
    st.deliveries.report(job_id, [report("1.2.3.100")], [["pacs"]])
    if state is JobState.REPORTED:
        return job_id
    st.deliveries.done(st.deliveries.due()[0])
    return job_id


@pytest.mark.parametrize(("start", "event"), list(TRANSITIONS), ids=[f"{s}-{e}" for s, e in TRANSITIONS])
def test_each_allowed_transition_moves_the_job(st: State, start: JobState, event: JobEvent) -> None:
    """Every row of the life-cycle table takes a job from its state to the listed next state."""
    job_id = _job_in(st, start)
    assert st.state(job_id) == start.value
    with st.stores.db.tx() as tx:
        assert st.jobs.apply(tx, job_id, event) is TRANSITIONS[(start, event)]
    assert st.state(job_id) == TRANSITIONS[(start, event)].value


_REFUSED = [(s, e) for s in JobState for e in JobEvent if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(("start", "event"), _REFUSED, ids=[f"{s}-{e}" for s, e in _REFUSED])
def test_every_other_change_is_refused_and_nothing_moves(st: State, start: JobState, event: JobEvent) -> None:
    """A change the table does not list (a delivered job re-inferred, a received one reported) is refused."""
    job_id = _job_in(st, start)
    with pytest.raises(InvalidTransition), st.stores.db.tx() as tx:
        st.jobs.apply(tx, job_id, event)
    assert st.state(job_id) == start.value


def test_census_counts_a_series_without_reading_its_rows(st: State) -> None:
    """Completion asks the index how many instances a series keeps, how many the models analyse and the
    first one's class (for `series.not_analysed`): counted in SQL, latest versions only."""
    mr = "1.2.840.10008.5.1.4.1.1.4"
    for i in range(5):
        st.add(ref(i), "a")
    st.add(InstanceRef(mr, f"{SERIES}.mr", SERIES, STUDY, "/spool/mr.dcm", "f" * 64, 10), "a")
    st.add(ref(2, sha="e" * 64), "a")  # a new version of instance 2 replaces it
    series_id = st.stores.db.conn.execute("SELECT id FROM series WHERE series_uid=?", (SERIES,)).fetchone()[0]
    assert st.index.census(series_id, (CT,)) == (6, 5, CT)
    assert st.index.census(series_id, (mr,)) == (6, 1, CT)
    assert st.index.census(series_id + 1, (CT,)) == (0, 0, None)
