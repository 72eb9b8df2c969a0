"""Reader feedback and agreement: stored with the job, audited without free text, one alarm per episode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from node_state import State

from edge_ai.domain import InstanceRef
from edge_ai.grouping.jobs import ReportRow
from edge_ai.observability.agreement import Agreement, FeedbackError, Policy, connect, store_feedback

MODEL = "demo-chest-xr"


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def _jobs(db: Path, n: int, *, reported: bool = True) -> list[int]:
    state = State(db.parent, db=db.name)
    ids = []
    for i in range(n):
        ref = InstanceRef("1.2.840.10008.5.1.4.1.1.1.1", f"1.2.3.{i}.1", f"1.2.3.{i}", "1.2.3", f"/x/{i}", f"h{i}", 1)
        job = state.add(ref, "assoc", "DX").job_id
        state.release("assoc")
        claimed = state.jobs.claim_ready()
        assert claimed is not None and claimed.id == job
        if reported:
            state.deliveries.report(job, [ReportRow(MODEL, "1.0.0", "onnxruntime", f"9.{i}", f"9.{i}.0", "/r", False,
                                                    0.1)], [[]])
        ids.append(job)
    state.close()
    return ids


def test_alarm_once_per_episode_and_recovery(tmp_path: Path) -> None:
    """Below min_agreement over a full window: one model.agreement_low; back above: model.agreement_recovered."""
    db = tmp_path / "queue.sqlite3"
    jobs = _jobs(db, 8)
    events: list[tuple[str, dict[str, Any]]] = []
    agreement = Agreement(db, {MODEL: Policy("1.0.0", 3, 0.8)}, lambda e, **f: events.append((e, f)), _Log())
    agreement.record_feedback(jobs[0], True, comment="Jane Doe, bed 12", principal="dr-who")
    assert agreement.values() == {MODEL: 1.0} and not agreement.states()[0].low  # window not full: no alarm
    agreement.record_feedback(jobs[1], False)
    agreement.record_feedback(jobs[2], False)
    agreement.record_feedback(jobs[3], False)
    assert [e for e, _ in events].count("model.agreement_low") == 1
    assert agreement.states()[0].low and agreement.values()[MODEL] == 0.0
    for job in jobs[4:7]:
        agreement.record_feedback(job, True)
    assert [e for e, _ in events].count("model.agreement_recovered") == 1
    received = [f for e, f in events if e == "feedback.received"]
    assert len(received) == 7 and received[0]["principal"] == "dr-who" and received[0]["models"] == [f"{MODEL} 1.0.0"]
    assert "Jane" not in repr(events)  # the free-text comment is stored, never audited


def test_feedback_from_another_process_is_audited_by_the_node(tmp_path: Path) -> None:
    """A verdict stored offline (edge-ai feedback) is audited and counted on the node's next tick, once."""
    db = tmp_path / "queue.sqlite3"
    jobs = _jobs(db, 2)
    events: list[str] = []
    agreement = Agreement(db, {MODEL: Policy("1.0.0", 50, 0.8)}, lambda e, **f: events.append(e), _Log())
    other = connect(db)
    store_feedback(other, jobs[0], False, [{"code": {"value": "427359005"}, "present": True}], "", "cli")
    other.close()
    assert agreement.values() == {}
    assert agreement.process_pending() == 1 and agreement.process_pending() == 0
    assert events == ["feedback.received"] and agreement.values() == {MODEL: 0.0}


def test_refusals(tmp_path: Path) -> None:
    """Unknown job, a job without a result, malformed findings: refused with a kind the API maps to a status."""
    db = tmp_path / "queue.sqlite3"
    jobs = _jobs(db, 1, reported=False)
    agreement = Agreement(db, {}, lambda e, **f: None, _Log())
    for args, kind in (((999, True), "unknown_job"), ((jobs[0], True), "no_result"),
                       ((jobs[0], "yes"), "invalid"), ((jobs[0], True, ["x"]), "invalid")):
        with pytest.raises(FeedbackError) as err:
            agreement.record_feedback(*args)  # type: ignore[arg-type]
        assert err.value.kind == kind
