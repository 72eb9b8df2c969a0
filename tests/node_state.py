"""The node's persistent state for unit tests: a real SQLite file and spool, wired as app.py wires them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_ai.domain import InstanceRef, JobState
from edge_ai.grouping.completion import SERIES, Completion
from edge_ai.grouping.jobs import Listener
from edge_ai.service.stores import Stores, open_stores
from edge_ai.spool.ingest import Ingest, StoreOutcome
from edge_ai.spool.store import Spool


class State:
    def __init__(self, root: Path, listener: Listener | None = None, quiet_window_s: float = 2.0,
                 series_timeout_s: float = 10.0, db: str = "spool/queue.sqlite3",
                 on_error: Any = None, **ingest_kwargs: Any) -> None:
        self.stores: Stores = open_stores(root, listener, Path(db), on_error)
        self.spool = Spool(root / "spool")
        self.completion = Completion(self.stores.jobs, quiet_window_s, series_timeout_s)
        self.ingest = Ingest(self.spool, self.stores.db, self.stores.index, self.stores.jobs,
                             **({"min_free_bytes": 0} | ingest_kwargs), carried=self._carried)
        self.jobs = self.stores.jobs
        self.deliveries = self.stores.deliveries
        self.index = self.stores.index

    def _carried(self, carrier: str, job_id: int) -> None:
        """Ingest's note to grouping; a carrier not opened yet is an association of a whole-series sender."""
        if carrier not in self.completion._open:
            self.completion.opened(carrier, SERIES)
        self.completion.carried(carrier, job_id)

    def close(self) -> None:
        self.stores.close()

    def add(self, ref: InstanceRef, carrier: str = "a", modality: str = "CT") -> StoreOutcome:
        """Index an instance as if `carrier` (an association of a caller that sends whole series) brought it."""
        return self.ingest.add(ref, modality, carrier)

    def release(self, carrier: str = "a") -> int:
        """The carrier is released; returns how many series became ready."""
        self.completion.closed(carrier, released=True)
        return self.completion.run_due()[0]

    def state(self, job_id: int) -> str:
        found = self.jobs.state(job_id)
        assert found is not None
        return found.value

    def count(self, table: str) -> int:
        with self.stores.db.read() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 - test tables


__all__ = ["JobState", "State"]
