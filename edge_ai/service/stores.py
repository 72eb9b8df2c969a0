"""The node's persistent state in one SQLite file, opened as its owners: the instance index (spool),
the job store and the model outputs it keeps per image (grouping) and the deliveries (outbox)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_ai.grouping.jobs import JobStore, Listener
from edge_ai.grouping.outputs import OutputStore
from edge_ai.outbox.deliveries import Deliveries
from edge_ai.spool.db import Database
from edge_ai.spool.index import InstanceIndex

FILENAME = Path("spool") / "queue.sqlite3"


@dataclass
class Stores:
    db: Database
    index: InstanceIndex
    jobs: JobStore
    deliveries: Deliveries
    outputs: OutputStore

    def close(self) -> None:
        self.db.close()


def open_stores(root: Path, listener: Listener | None = None, filename: Path = FILENAME,
                on_error: Callable[[BaseException], None] | None = None) -> Stores:
    """Open (creating where new) the state under `storage.root`; `on_error`: see `Database`."""
    db = Database(root / filename, on_error)
    index = InstanceIndex(db)
    jobs = JobStore(db, listener)
    return Stores(db, index, jobs, Deliveries(db, jobs), OutputStore(db))
