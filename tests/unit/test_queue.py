"""edge_ai.spool.queue and edge_ai.spool.store: the job state machine and durable Part-10 files."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_ai.domain import InstanceRef, JobState
from edge_ai.spool import queue as queue_mod
from edge_ai.spool import store as store_mod
from edge_ai.spool.queue import Queue, ReportRow
from edge_ai.spool.store import Spool, write_durably

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
def q(tmp_path: Path, events: list[Event]) -> Iterator[Queue]:
    queue = Queue(tmp_path / "queue.sqlite", listener=lambda *e: events.append(e))
    yield queue
    queue.close()


def state(q: Queue, job_id: int) -> str:
    with q._lock:
        return str(q._db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0])


def later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    real = time.time
    monkeypatch.setattr(queue_mod.time, "time", lambda: real() + seconds)


def test_full_life_of_a_series_reaches_delivered(q: Queue, events: list[Event]) -> None:
    """received -> ready on release -> inferring -> reported -> delivered, and the listener sees each step."""
    out = [q.add_instance(ref(i), "CT", "assoc-1") for i in range(3)]
    job_id = out[0].job_id
    assert {o.job_id for o in out} == {job_id} and not any(o.duplicate or o.reopened for o in out)
    assert state(q, job_id) == "received"
    assert q.claim_ready() is None  # nothing is inferred while the association is still open

    assert q.association_released("assoc-1") == 1
    assert state(q, job_id) == "ready"

    job = q.claim_ready()
    assert job is not None and job.id == job_id and job.series_uid == SERIES and job.study_uid == STUDY
    assert job.modality == "CT" and job.generation == 1 and job.state is JobState.INFERRING
    assert q.claim_ready() is None  # one worker per job
    uids = [r.sop_instance_uid for r in q.series_instances(job.series_id)]
    assert uids == [f"{SERIES}.{i}" for i in range(3)]

    q.add_reports(job_id, [report("1.2.3.100")], [["results", "pacs"]])
    assert state(q, job_id) == "reported"
    due = q.due_deliveries()
    assert sorted(d.destination for d in due) == ["pacs", "results"]
    q.delivery_done(due[0])
    assert state(q, job_id) == "reported"  # one destination still pending
    q.delivery_done(due[1])
    assert state(q, job_id) == "delivered"
    assert q.due_deliveries() == [] and q.next_delivery_at() is None

    life = (JobState.RECEIVED, JobState.READY, JobState.INFERRING, JobState.REPORTED, JobState.DELIVERED)
    assert [(e[0], e[1], e[2]) for e in events] == [(job_id, SERIES, s) for s in life]
    assert q.counts()["delivered"] == 1


def test_release_of_another_association_does_not_complete_the_series(q: Queue) -> None:
    """Only the association that carried a series completes it."""
    job_id = q.add_instance(ref(1), "CT", "assoc-1").job_id
    assert q.association_released("assoc-2") == 0
    assert state(q, job_id) == "received"


def test_series_over_several_associations_waits_for_silence(
    q: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A series sent over two associations is not cut short by either release; completes after the timeout."""
    job_id = q.add_instance(ref(1), "CT", "assoc-1").job_id
    q.add_instance(ref(2), "CT", "assoc-2")
    assert q.association_released("assoc-1") == 0
    assert q.association_released("assoc-2") == 0
    assert q.ready_after_silence(10) == 0
    assert state(q, job_id) == "received"
    later(monkeypatch, 11)
    assert q.ready_after_silence(10) == 1
    assert state(q, job_id) == "ready"


def test_more_instances_after_ready_hold_the_series_back(q: Queue, events: list[Event]) -> None:
    """An instance that arrives after release but before inference sends the job back to waiting."""
    job_id = q.add_instance(ref(1), "CT", "assoc-1").job_id
    q.association_released("assoc-1")
    again = q.add_instance(ref(2), "CT", "assoc-2")
    assert again.job_id == job_id and not again.reopened
    assert state(q, job_id) == "received"
    assert events[-1][2] is JobState.RECEIVED and events[-1][3] == "more instances arrived"
    assert q.claim_ready() is None


def test_recover_after_restart_puts_inferring_jobs_back_to_ready(tmp_path: Path) -> None:
    """A job caught mid-inference by a crash is picked up again after restart, not lost."""
    path = tmp_path / "queue.sqlite"
    first = Queue(path)
    first.add_instance(ref(1), "CT", "a")
    first.association_released("a")
    job = first.claim_ready()
    assert job is not None
    first.close()

    seen: list[Event] = []
    second = Queue(path, listener=lambda *e: seen.append(e))
    try:
        assert second.recover() == 1
        assert seen == [(job.id, SERIES, JobState.READY, "resumed after restart")]
        again = second.claim_ready()
        assert again is not None and again.id == job.id
        assert second.recover() == 1 and second.recover() == 0
    finally:
        second.close()


def test_duplicate_instance_is_stored_once(q: Queue) -> None:
    """The same SOP Instance UID with the same bytes is recognised and indexed once."""
    first = q.add_instance(ref(1), "CT", "a")
    second = q.add_instance(ref(1), "CT", "b")
    assert second.duplicate and not second.conflict and second.job_id == first.job_id
    assert q.has_instance(f"{SERIES}.1", f"{1:064x}")
    job = (q.association_released("a"), q.claim_ready())[1]
    assert job is not None and len(q.series_instances(job.series_id)) == 1


def test_same_uid_other_bytes_is_a_conflict_and_latest_version_wins(q: Queue) -> None:
    """A resend with changed content is kept as a new version; inference sees only the latest."""
    q.add_instance(ref(1), "CT", "a")
    q.add_instance(ref(2), "CT", "a")
    changed = q.add_instance(ref(1, sha="f" * 64), "CT", "a")
    assert changed.conflict and not changed.duplicate
    q.association_released("a")
    job = q.claim_ready()
    assert job is not None
    instances = q.series_instances(job.series_id)
    latest = [(i.sop_instance_uid, i.sha256) for i in instances]
    assert latest == [(f"{SERIES}.2", f"{2:064x}"), (f"{SERIES}.1", "f" * 64)]


def test_late_instance_opens_generation_two_with_predecessor(q: Queue) -> None:
    """An instance after inference started reopens the series; the new job can name the earlier SR."""
    q.add_instance(ref(1), "CT", "a")
    q.association_released("a")
    gen1 = q.claim_ready()
    assert gen1 is not None

    late = q.add_instance(ref(2), "CT", "b")
    assert late.reopened and late.job_id != gen1.id
    assert state(q, gen1.id) == "inferring"
    q.add_reports(gen1.id, [report("1.2.3.100")], [["results"]])

    q.association_released("b")
    gen2 = q.claim_ready()
    assert gen2 is not None and gen2.id == late.job_id and gen2.generation == 2
    assert gen2.series_id == gen1.series_id
    assert len(q.series_instances(gen2.series_id)) == 2
    assert q.previous_report(gen2.series_id, "demo-ct-lesion", gen2.id) == ("1.2.3.100", "1.2.3.999")
    assert q.previous_report(gen2.series_id, "other-model", gen2.id) is None
    assert q.previous_report(gen1.series_id, "demo-ct-lesion", gen1.id) is None


def test_dead_letter_fails_the_job_with_reason(q: Queue) -> None:
    """A delivery given up on fails the job with a 'dead letter' reason and is listed in dead letters."""
    q.add_instance(ref(1), "CT", "a")
    q.association_released("a")
    job = q.claim_ready()
    assert job is not None
    q.add_reports(job.id, [report("1.2.3.100")], [["results", "pacs"]])
    by_dest = {d.destination: d for d in q.due_deliveries()}
    q.delivery_dead(by_dest["pacs"], "status 0xA900")
    assert state(q, job.id) == "reported"  # results still pending
    q.delivery_done(by_dest["results"])
    assert state(q, job.id) == "failed"
    failed = q.failed_jobs()
    assert len(failed) == 1 and str(failed[0]["reason"]).startswith("dead letter")
    assert "pacs" in str(failed[0]["reason"]) and "0xA900" in str(failed[0]["reason"])
    dead = q.dead_letters()
    assert [(d["destination"], d["reason"], d["sop_instance_uid"]) for d in dead] == [
        ("pacs", "status 0xA900", "1.2.3.100")
    ]


def test_retry_postpones_delivery(q: Queue) -> None:
    """A retried delivery is not due again until its next_at, and its attempts are counted."""
    q.add_instance(ref(1), "CT", "a")
    q.association_released("a")
    job = q.claim_ready()
    assert job is not None
    q.add_reports(job.id, [report("1.2.3.100")], [["pacs"]])
    (d,) = q.due_deliveries()
    q.delivery_retry(d, "refused", time.time() + 60)
    assert q.due_deliveries() == []
    (again,) = q.due_deliveries(now=time.time() + 61)
    assert again.attempts == 1


def test_fail_job_records_reason(q: Queue, events: list[Event]) -> None:
    """A job that cannot be processed is failed with its reason, visible in status and to the listener."""
    q.add_instance(ref(1), "CT", "a")
    q.association_released("a")
    job = q.claim_ready()
    assert job is not None
    q.fail_job(job.id, "pixel data cannot be decoded")
    assert q.failed_jobs()[0]["reason"] == "pixel data cannot be decoded"
    assert events[-1] == (job.id, SERIES, JobState.FAILED, "pixel data cannot be decoded")


def test_listener_not_told_of_rolled_back_changes(q: Queue, events: list[Event]) -> None:
    """A transaction that fails announces nothing, so the audit never records a change that did not happen."""
    q.add_instance(ref(1), "CT", "a")
    q.association_released("a")
    job = q.claim_ready()
    assert job is not None
    count = len(events)
    with pytest.raises(ValueError):
        q.add_reports(job.id, [report("1.2.3.100")], [])  # lengths differ: zip(strict=True) raises
    assert len(events) == count
    assert state(q, job.id) == "inferring"


# ---- store ---------------------------------------------------------------------------------------


def test_write_durably_stores_the_bytes(tmp_path: Path) -> None:
    """Bytes or chunks land complete at the target; the tmp folder is empty afterwards."""
    spool = Spool(tmp_path / "spool")
    target = spool.instance_path("1.2.3|abc")
    spool.write(target, [b"DICM", b"-", b"payload"])
    assert target.read_bytes() == b"DICM-payload"
    assert list(spool.tmp.iterdir()) == []
    spool.write(target, b"other")
    assert target.read_bytes() == b"other"


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_write_durably_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A failed write leaves neither a target file nor a tmp file behind."""
    spool = Spool(tmp_path / "spool")
    target = spool.instance_path("1.2.3|abc")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.os, failing, boom)
    with pytest.raises(OSError):
        spool.write(target, b"x" * 1000)
    monkeypatch.undo()
    assert not target.exists()
    assert list(spool.tmp.iterdir()) == []


def test_write_durably_without_tmp_dir_cleans_up(tmp_path: Path) -> None:
    """Writing over a directory fails cleanly: no stray tmp file next to it."""
    target = tmp_path / "out" / "x.dcm"
    target.mkdir(parents=True)
    with pytest.raises(OSError):
        write_durably(target, b"data")
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def test_spool_start_removes_unacknowledged_tmp_files(tmp_path: Path) -> None:
    """Leftovers of a crash mid-write were never acknowledged and are cleared at start."""
    spool = Spool(tmp_path / "spool")
    (spool.tmp / ".x.dcm.1.2.tmp").write_bytes(b"half")
    Spool(tmp_path / "spool")
    assert list(spool.tmp.iterdir()) == []


@pytest.mark.parametrize(
    "key", ["1.2.840.113619.2.55.3|" + "a" * 64, "../../etc/passwd", "/abs/path", "..", "a/../../b", "x\x00y"]
)
def test_instance_path_has_no_uid_text_and_stays_in_spool(tmp_path: Path, key: str) -> None:
    """File names come from a hash: peer-chosen UIDs cannot show in or steer the path."""
    spool = Spool(tmp_path / "spool")
    for path in (spool.instance_path(key), spool.report_path(key)):
        assert ".." not in path.parts
        assert key not in str(path) and "1.2.840" not in str(path)
        resolved = path.resolve()
        assert resolved.is_relative_to(spool.root.resolve())
    assert spool.instance_path(key).parent.parent == spool.instances
    assert spool.instance_path(key) != spool.instance_path(key + "x")


def test_free_bytes_reports_the_disk(tmp_path: Path) -> None:
    """Free space is what the file system says (the C-STORE 0xA700 check relies on it)."""
    spool = Spool(tmp_path / "spool")
    st = os.statvfs(tmp_path)
    assert abs(spool.free_bytes() - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
