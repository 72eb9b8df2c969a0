"""edge_ai.grouping.completion: when the node decides a series is whole (docs/conformance.md, "Series
completion"), with a controlled clock over a real job store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from node_state import State
from test_jobs import ref

from edge_ai.grouping.completion import INSTANCES, SERIES


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    from edge_ai.grouping import jobs as jobs_mod

    monkeypatch.setattr(jobs_mod.time, "time", clock)  # last_instance_at follows the same clock
    return clock


@pytest.fixture
def st(tmp_path: Path, clock: Clock) -> Iterator[State]:
    state = State(tmp_path, quiet_window_s=2.0, series_timeout_s=10.0)
    state.completion.clock = clock
    yield state
    state.close()


def send(st: State, carrier: str, n: int, sends: str | None = None, series: str = "1.2.3.4") -> int:
    st.completion.opened(carrier, sends)
    outcomes = [st.ingest.add(ref(i, series), "CT", carrier) for i in n_range(n)]
    return outcomes[0].job_id


def n_range(spec: int | range) -> range:
    return spec if isinstance(spec, range) else range(spec)


def due(st: State) -> int:
    return st.completion.run_due()[0]


def test_declared_series_sender_completes_at_release(st: State) -> None:
    """A caller that sends whole series gets its result without any wait after the release."""
    job = send(st, "a1", 5, SERIES)
    assert due(st) == 0  # still open
    st.completion.closed("a1", released=True)
    assert due(st) == 1 and st.state(job) == "ready"


def test_one_instance_per_association_completes_once_after_the_quiet_window(st: State, clock: Clock) -> None:
    """40 associations of one instance each make one ready series, only after the last one is quiet."""
    job = 0
    for i in range(40):
        st.completion.opened(f"c{i}", None)
        job = st.ingest.add(ref(i), "CT", f"c{i}").job_id
        st.completion.closed(f"c{i}", released=True)
        clock.now += 0.05
        assert due(st) == 0, f"completed after instance {i}"
    assert st.state(job) == "received"
    clock.now += 1.9
    assert due(st) == 0
    clock.now += 0.2
    assert due(st) == 1 and st.state(job) == "ready"


def test_declared_instances_sender_waits_the_quiet_window(st: State, clock: Clock) -> None:
    """sends: instances is never completed by a release alone."""
    job = send(st, "a1", 1, INSTANCES)
    st.completion.closed("a1", released=True)
    assert due(st) == 0
    clock.now += 2.01
    assert due(st) == 1 and st.state(job) == "ready"


def test_sequential_split_is_one_series(st: State, clock: Clock) -> None:
    """A series split over two associations one after the other (undeclared caller) gives one job."""
    job = send(st, "a1", range(0, 20))
    st.completion.closed("a1", released=True)
    clock.now += 0.5
    assert due(st) == 0
    assert send(st, "a2", range(20, 40)) == job
    clock.now += 1.8  # past the first release's window, but the second association is still open
    assert due(st) == 0
    st.completion.closed("a2", released=True)
    clock.now += 2.01
    assert due(st) == 1
    assert len(st.index.series_instances(1)) == 40


def test_parallel_split_waits_for_every_carrier(st: State) -> None:
    """Two associations carrying one series at once: the first release does not complete it."""
    st.completion.opened("a1", SERIES)
    st.completion.opened("a2", SERIES)
    job = st.ingest.add(ref(1), "CT", "a1").job_id
    st.ingest.add(ref(2), "CT", "a2")
    st.completion.closed("a1", released=True)
    assert due(st) == 0
    st.completion.closed("a2", released=True)
    assert due(st) == 1 and st.state(job) == "ready"


def test_aborted_association_waits_the_aborted_timeout(st: State, clock: Clock) -> None:
    """An aborted transfer is likely to be sent again: its series waits aborted_timeout_s, not the window."""
    st.completion.configure(2.0, 10.0, aborted_timeout_s=60.0)
    job = send(st, "a1", 3, SERIES)
    st.completion.closed("a1", released=False)
    clock.now += 59.9
    assert due(st) == 0
    clock.now += 0.2
    assert due(st) == 1 and st.state(job) == "ready"


def test_a_release_noted_while_a_verdict_is_being_made_is_not_forgotten(st: State, clock: Clock) -> None:
    """A series that starts and is released between the verdict's look at the job store and its bookkeeping
    still completes after the quiet window, not after the (longer) timeout."""
    real = st.jobs.receiving
    job: list[int] = []

    def receiving_then_a_new_series() -> list[tuple[int, float]]:
        snapshot = real()
        if not job:
            job.append(send(st, "a1", 1))
            st.completion.closed("a1", released=True)
        return snapshot

    st.jobs.receiving = receiving_then_a_new_series  # type: ignore[method-assign]
    assert due(st) == 0
    st.jobs.receiving = real  # type: ignore[method-assign]
    clock.now += 2.01
    assert due(st) == 1 and st.state(job[0]) == "ready"


def test_a_reload_changes_the_quiet_window(st: State, clock: Clock) -> None:
    """grouping settings follow a reload (SIGHUP): a shorter quiet window applies to the next release."""
    st.completion.configure(0.5, 10.0)
    job = send(st, "a1", 1)
    st.completion.closed("a1", released=True)
    clock.now += 0.6
    assert due(st) == 1 and st.state(job) == "ready"


def test_an_open_association_that_goes_quiet_completes_its_series_after_the_timeout(st: State, clock: Clock) -> None:
    """A router that keeps one association open for hours still gets results, series_timeout_s after a series."""
    job = send(st, "a1", 3, SERIES)
    clock.now += 10.1
    assert due(st) == 1 and st.state(job) == "ready"
    assert st.completion.carriers() == 1


def test_after_a_restart_series_wait_the_timeout(tmp_path: Path, clock: Clock) -> None:
    """Carriers live in memory: a series left arriving at a restart completes after series_timeout_s."""
    first = State(tmp_path)
    first.completion.clock = clock
    job = send(first, "a1", 3, SERIES)
    first.close()
    second = State(tmp_path)
    second.completion.clock = clock
    try:
        assert due(second) == 0
        clock.now += 10.1
        assert due(second) == 1 and second.state(job) == "ready"
    finally:
        second.close()


def test_an_instance_racing_the_verdict_keeps_the_series_open(st: State, clock: Clock) -> None:
    """A verdict computed just before another instance arrives is not applied: nothing ready mid-arrival."""
    job = send(st, "a1", 1, SERIES)
    st.completion.closed("a1", released=True)
    ready, _ = st.completion._verdicts(clock.now)
    clock.now += 0.01
    send(st, "a2", range(1, 2))  # arrives between the verdict and its application
    assert sum(st.jobs.complete(items, why) for why, items in ready.items()) == 0
    assert st.state(job) == "received"


def test_next_due_time_is_reported(st: State, clock: Clock) -> None:
    """The grouping loop learns when to look next, so a quiet window is acted on promptly."""
    send(st, "a1", 1)
    st.completion.closed("a1", released=True)
    done, soonest = st.completion.run_due()
    assert done == 0 and soonest == pytest.approx(clock.now + 2.0)
