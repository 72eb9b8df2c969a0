"""Model outputs per image, kept in the job store while a series arrives, and each job's routing.

The worker infers a series' images as they are stored (service/workers.py `Pipeline.advance`): each
image's output (one row per instance and frame, keyed by the instance's index row, which names its
content: SOP Instance UID + sha256, and by model name + version) is written here, not held in memory.
When the series is complete only aggregation, the SR and delivery remain (`gather` gives the outputs
back in slice order). A series that reopens reuses the rows of the instances it already had; a row
with an `error` records an image that could not be inferred while arriving: it is tried again, and
its job fails with the reason, when the series completes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_ai.domain import InstanceRef
from edge_ai.spool.db import Database
from edge_ai.spool.index import IMAGE_COLUMNS, LATEST, Kept, image_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outputs (
    instance_id INTEGER NOT NULL REFERENCES instances(id), model_name TEXT NOT NULL,
    model_version TEXT NOT NULL, frame_index INTEGER NOT NULL, frame_number INTEGER,
    key_z REAL NOT NULL DEFAULT 0, key_instance INTEGER NOT NULL DEFAULT 0, key_frame INTEGER NOT NULL DEFAULT 0,
    rows INTEGER NOT NULL DEFAULT 0, columns INTEGER NOT NULL DEFAULT 0, probability REAL,
    x0 REAL, y0 REAL, x1 REAL, y1 REAL, error TEXT, seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, model_name, model_version, frame_index)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_routes (
    job_id INTEGER PRIMARY KEY REFERENCES jobs(id), routing TEXT NOT NULL, decisions TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Output:
    """One image's model output (or why it has none: `error`), with its slice-order key."""

    instance_id: int
    frame_index: int
    frame_number: int | None
    key: tuple[float, int, int]
    rows: int
    columns: int
    probability: float | None
    box: tuple[float, float, float, float] | None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Gathered:
    """A series' outputs for one model in slice order, as `inference.aggregate.summarize` takes them."""

    sop_instance_uids: list[str]
    sop_class_uids: list[str]
    rows: list[int]
    columns: list[int]
    frame_numbers: list[int | None]
    probability: np.ndarray
    box: np.ndarray
    seconds: float
    errors: list[str]


class OutputStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(_SCHEMA)

    def put(self, model: tuple[str, str], outputs: Sequence[Output]) -> None:
        """Record outputs of `model` (name, version), replacing any earlier row of the same image."""
        if not outputs:
            return
        with self.db.tx() as tx:
            for o in outputs:
                if o.error is not None:  # an instance that failed keeps nothing but its reason
                    tx.execute("DELETE FROM outputs WHERE instance_id=? AND model_name=? AND model_version=?",
                               (o.instance_id, *model))
                box = o.box or (None, None, None, None)
                tx.execute(
                    "INSERT OR REPLACE INTO outputs(instance_id, model_name, model_version, frame_index,"
                    " frame_number, key_z, key_instance, key_frame, rows, columns, probability, x0, y0, x1, y1,"
                    " error, seconds) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (o.instance_id, *model, o.frame_index, o.frame_number, *o.key, o.rows, o.columns,
                     o.probability, *box, o.error, o.seconds))

    def pending(self, series_id: int, model: tuple[str, str], sop_classes: Sequence[str],
                limit: int, after: int | None = None) -> list[Kept]:
        """Up to `limit` kept instances of the series (latest versions, `sop_classes`) with no output row
        for `model`, in slice order as far as the index knows it (z, Instance Number, arrival). With
        `after` (an instance row id): only later arrivals, in arrival order, a cost that does not grow
        with the series (the worker looks after every instance stored)."""
        marks = ",".join("?" * len(sop_classes))
        since, order = ("AND i.id > ?", "i.id") if after is not None else ("AND ?=0", "g.z, g.instance_number, i.id")
        with self.db.read() as db:
            rows = db.execute(
                "SELECT i.id, i.sop_class_uid, i.sop_instance_uid, s.series_uid, s.study_uid, i.path, i.sha256,"  # noqa: S608  (constant fragments; values are parameters)
                f" i.size, {IMAGE_COLUMNS} FROM instances i JOIN series s ON s.id=i.series_id"
                " LEFT JOIN images g ON g.instance_id=i.id"
                f" WHERE i.series_id=? {since} AND {LATEST} AND i.sop_class_uid IN ({marks})"
                " AND NOT EXISTS (SELECT 1 FROM outputs o WHERE o.instance_id=i.id AND o.model_name=?"
                f" AND o.model_version=?) ORDER BY {order} LIMIT ?",
                (series_id, after or 0, *sop_classes, *model, limit)).fetchall()
        return [Kept(int(r[0]), InstanceRef(*r[1:8]), image_of(*r[8:11])) for r in rows]

    def forget_errors(self, series_id: int, model: tuple[str, str]) -> int:
        """Drop the error rows of the series' instances for `model`, so they are tried again."""
        with self.db.tx() as tx:
            cur = tx.execute(
                "DELETE FROM outputs WHERE model_name=? AND model_version=? AND error IS NOT NULL AND instance_id IN"
                " (SELECT id FROM instances WHERE series_id=?)", (*model, series_id))
            return int(cur.rowcount)

    def gather(self, series_id: int, model: tuple[str, str], sop_classes: Sequence[str]) -> Gathered:
        """Every output of `model` for the series' kept instances, in slice order: z, Instance Number,
        frame number, then arrival (the order the whole-series pipeline sorted its images in)."""
        marks = ",".join("?" * len(sop_classes))
        got = Gathered([], [], [], [], [], np.zeros(0), np.zeros((0, 4)), 0.0, [])
        probability: list[float] = []
        box: list[tuple[float, float, float, float]] = []
        same: dict[object, object] = {}  # one object per distinct value (class UID, size): memory per image
        with self.db.read() as db:
            cursor = db.execute(
                "SELECT i.sop_instance_uid, i.sop_class_uid, o.rows, o.columns, o.frame_number, o.probability,"  # noqa: S608  (constant fragments; values are parameters)
                " o.x0, o.y0, o.x1, o.y1, o.seconds, o.error FROM outputs o JOIN instances i ON i.id=o.instance_id"
                f" WHERE i.series_id=? AND {LATEST} AND i.sop_class_uid IN ({marks}) AND o.model_name=?"
                " AND o.model_version=? ORDER BY o.key_z, o.key_instance, o.key_frame, i.id, o.frame_index",
                (series_id, *sop_classes, *model))
            for uid, sop_class, rows, columns, frame, prob, x0, y0, x1, y1, seconds, error in cursor:
                got.seconds += seconds
                if error is not None:
                    got.errors.append(str(error))
                    continue
                got.sop_instance_uids.append(uid)
                got.sop_class_uids.append(same.setdefault(sop_class, sop_class))  # type: ignore[arg-type]
                got.rows.append(same.setdefault(rows, rows))  # type: ignore[arg-type]
                got.columns.append(same.setdefault(columns, columns))  # type: ignore[arg-type]
                got.frame_numbers.append(frame)
                probability.append(prob)
                box.append((x0, y0, x1, y1))
        got.probability = np.array(probability, dtype=np.float64)
        got.box = np.array(box, dtype=np.float64).reshape(len(box), 4)
        return got

    # ---- routing decided once per job ---------------------------------------------------------------
    def route_of(self, job_id: int, routing: str) -> list[list[str]] | None:
        """The job's stored routing decisions ([route, model, *destinations] each), if made under `routing`
        (a fingerprint of the routing config: a reload that changes it makes them stale)."""
        with self.db.read() as db:
            row = db.execute("SELECT routing, decisions FROM job_routes WHERE job_id=?", (job_id,)).fetchone()
        if row is None or row[0] != routing:
            return None
        decisions: list[list[str]] = json.loads(row[1])
        return decisions

    def set_route(self, job_id: int, routing: str, decisions: list[list[str]]) -> None:
        with self.db.tx() as tx:
            tx.execute("INSERT OR REPLACE INTO job_routes(job_id, routing, decisions) VALUES (?,?,?)",
                       (job_id, routing, json.dumps(decisions)))

    def drop_route(self, job_id: int) -> None:
        with self.db.tx() as tx:
            tx.execute("DELETE FROM job_routes WHERE job_id=?", (job_id,))

    def receiving_jobs(self, limit: int = 16) -> list[tuple[int, int, float]]:
        """(job id, series id, last instance time) of jobs whose series is still arriving, oldest first."""
        with self.db.read() as db:
            rows = db.execute("SELECT id, series_id, last_instance_at FROM jobs WHERE state='received'"
                              " ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(int(r[0]), int(r[1]), float(r[2])) for r in rows]
