"""When a series is whole: the node's own decision, made fast and never from a series still arriving.

DICOM says nothing about the end of a series, so the node reads the evidence it has (docs/conformance.md,
"Series completion"):

1. A series that an open association (or HTTP request: any *carrier*) is still delivering is never
   complete, except after `grouping.series_timeout_s` without a new instance (a router that keeps one
   association open for hours).
2. When the last carrier of a series ends with a release and the caller declared `sends: series` in
   `node.allowed_callers` (and for an HTTP request, which is whole at its end), the series is complete
   at once.
3. Otherwise (one instance per association, or a caller that did not say) it is complete once
   `grouping.quiet_window_s` has passed after that release with no new instance and no new carrier:
   the next association of a one-instance-per-association sender arrives well inside it.
4. A carrier that ended without release (A-ABORT, a dropped connection) and series the node knows
   nothing about (it restarted) wait `grouping.aborted_timeout_s` after their last instance, since a
   sender that failed usually sends again (a router's retry comes after its own interval).

Carriers live in memory only: after a restart rule 4 applies to every series still arriving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_ai.grouping.jobs import JobStore

SERIES = "series"  # allowed_callers[].sends: the caller sends whole series per association
INSTANCES = "instances"


@dataclass
class _Carrier:
    sends: str | None
    jobs: set[int] = field(default_factory=set)


class Completion:
    def __init__(self, jobs: JobStore, quiet_window_s: float, series_timeout_s: float,
                 aborted_timeout_s: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.jobs = jobs
        self.clock = clock
        self.configure(quiet_window_s, series_timeout_s, aborted_timeout_s)
        self._lock = threading.Lock()
        self._open: dict[str, _Carrier] = {}
        # job id -> (complete at, why, noted at): rules 2 and 3
        self._closed: dict[int, tuple[float, str, float]] = {}
        self.changed = threading.Event()  # set when something may have become due sooner

    def configure(self, quiet_window_s: float, series_timeout_s: float, aborted_timeout_s: float | None = None) -> None:
        """The grouping settings (at start, and again on a reload)."""
        self.quiet_window_s = min(quiet_window_s, series_timeout_s)
        self.series_timeout_s = series_timeout_s
        self.aborted_timeout_s = series_timeout_s if aborted_timeout_s is None else aborted_timeout_s

    def opened(self, carrier: str, sends: str | None = None) -> None:
        with self._lock:
            self._open[carrier] = _Carrier(sends)

    def carried(self, carrier: str, job_id: int) -> None:
        """An instance of job `job_id`'s series arrived on `carrier`."""
        if not job_id:
            return
        with self._lock:
            entry = self._open.get(carrier)
            if entry is not None:
                entry.jobs.add(job_id)
            self._closed.pop(job_id, None)

    def closed(self, carrier: str, released: bool) -> int:
        """The carrier ended (released: normally); returns how many of its series now wait on rule 2 or 3."""
        now = self.clock()
        with self._lock:
            entry = self._open.pop(carrier, None)
            if entry is None:
                return 0
            for job_id in entry.jobs:
                if not released:
                    self._closed.pop(job_id, None)  # rule 4
                elif entry.sends == SERIES:
                    self._closed[job_id] = (now, "carrier released; caller sends whole series", now)
                else:
                    self._closed[job_id] = (now + self.quiet_window_s,
                                            f"quiet for {self.quiet_window_s:g} s after release", now)
            count = len(entry.jobs) if released else 0
        self.changed.set()
        return count

    def _verdicts(self, now: float) -> tuple[dict[str, list[tuple[int, float]]], float | None]:
        """Jobs complete now grouped by reason, and when the next one will be."""
        seen_at = self.clock()  # what is noted after this may concern jobs the snapshot below misses
        receiving = self.jobs.receiving()
        ready: dict[str, list[tuple[int, float]]] = {}
        soonest: float | None = None
        with self._lock:
            carried = {job for c in self._open.values() for job in c.jobs}
            live = {job for job, _ in receiving}
            for job, (_, _, noted) in list(self._closed.items()):
                if job not in live and noted < seen_at:
                    del self._closed[job]  # moved on (completed, or a later generation): forget it
            for job, last in receiving:
                if job in carried:
                    at, why = last + self.series_timeout_s, "series timeout on an open association"
                elif job in self._closed:
                    at, why, _ = self._closed[job]
                else:
                    at, why = last + self.aborted_timeout_s, "timeout after an aborted transfer or a restart"
                if at <= now:
                    ready.setdefault(why, []).append((job, last))
                else:
                    soonest = at if soonest is None else min(soonest, at)
        return ready, soonest

    def run_due(self) -> tuple[int, float | None]:
        """Complete every series that is due; returns how many, and when the next is due (None: none)."""
        ready, soonest = self._verdicts(self.clock())
        done = sum(self.jobs.complete(ids, why) for why, ids in ready.items())
        return done, soonest

    def carriers(self) -> int:
        with self._lock:
            return len(self._open)
