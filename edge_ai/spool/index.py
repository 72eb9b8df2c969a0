"""The instance index: which series exist and which durable files hold their instances (ingest,
recovery, retention). Grouping and jobs live in edge_ai/grouping/jobs.py, deliveries in the outbox."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from edge_ai.domain import InstanceRef
from edge_ai.spool.db import Database
from edge_ai.spool.header import ImageRecord, ImageRow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL REFERENCES series(id),
    sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, path TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 1,
    received_at REAL NOT NULL, UNIQUE (sop_instance_uid, sha256));
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_id);
CREATE INDEX IF NOT EXISTS instances_kept ON instances(series_id) WHERE path != '';
CREATE TABLE IF NOT EXISTS images (
    instance_id INTEGER PRIMARY KEY REFERENCES instances(id), instance_number INTEGER, z REAL,
    syntax TEXT NOT NULL, pixel_offset INTEGER, attrs TEXT NOT NULL);
"""
# the columns of `images` a worker reads with an instance (see `image_of`)
IMAGE_COLUMNS = "g.syntax, g.pixel_offset, g.attrs"
# an instance with these exact bytes is indexed: reception's early check and the indexing transaction's
_SAME_BYTES = "SELECT 1 FROM instances WHERE sop_instance_uid=? AND sha256=?"
# the latest version of each instance of a series still in the spool (`i`: instances, `s`: series)
LATEST = ("i.path != '' AND i.version = (SELECT MAX(version) FROM instances j"
          " WHERE j.sop_instance_uid=i.sop_instance_uid)")


@dataclass(frozen=True)
class Kept:
    """A kept instance as the worker reads it: its index row, spool entry and the image record ingest
    made of its header (None: ingest's fast header read could not; the worker reads the header)."""

    instance_id: int
    ref: InstanceRef
    image: ImageRecord | None


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an SR lists of one source instance (and orders them by), without reading its file."""

    instance_id: int
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str | None  # None: no image record; read from the file's header
    instance_number: str | None


@dataclass(frozen=True)
class Indexed:
    series_id: int
    duplicate: bool  # same SOP Instance UID and bytes already stored
    conflict: bool  # same SOP Instance UID, different bytes: kept as a new version


class InstanceIndex:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(_SCHEMA)

    def add(self, tx: sqlite3.Connection, ref: InstanceRef, modality: str,
            image: ImageRecord | ImageRow | None = None) -> Indexed:
        """Index a durable file inside the caller's transaction (`Database.tx`), with the image record
        ingest's header read gave (ordering and preprocessing read it instead of the file's header)."""
        now = time.time()
        tx.execute(
            "INSERT INTO series(study_uid, series_uid, modality, created_at) VALUES (?,?,?,?) "
            "ON CONFLICT(series_uid) DO NOTHING",
            (ref.study_instance_uid, ref.series_instance_uid, modality, now),
        )
        series_id = int(tx.execute("SELECT id FROM series WHERE series_uid=?",
                                   (ref.series_instance_uid,)).fetchone()[0])
        if tx.execute(_SAME_BYTES, (ref.sop_instance_uid, ref.sha256)).fetchone():
            return Indexed(series_id, True, False)
        versions = tx.execute("SELECT COALESCE(MAX(version), 0) FROM instances WHERE sop_instance_uid=?",
                              (ref.sop_instance_uid,)).fetchone()[0]
        tx.execute(
            "INSERT INTO instances(series_id, sop_instance_uid, sop_class_uid, path, sha256, size, version,"
            " received_at) VALUES (?,?,?,?,?,?,?,?)",
            (series_id, ref.sop_instance_uid, ref.sop_class_uid, ref.path, ref.sha256, ref.size, versions + 1, now),
        )
        if image is not None:
            row = image if isinstance(image, ImageRow) else image.row()
            tx.execute("INSERT INTO images(instance_id, instance_number, z, syntax, pixel_offset, attrs)"
                       " VALUES (last_insert_rowid(),?,?,?,?,?)",
                       (row.instance_number, row.z, row.syntax, row.pixel_offset, row.attrs_json))
        return Indexed(series_id, False, versions > 0)

    def has_instance(self, sop_instance_uid: str, sha256: str) -> bool:
        """Whether these exact bytes are indexed already (as of the last commit: `add` decides again)."""
        params = (sop_instance_uid, sha256)
        try:
            return self.db.glance(_SAME_BYTES, params) is not None
        except sqlite3.Error:  # no read connection of its own (descriptors exhausted...): the shared one answers
            with self.db.read() as db:
                return db.execute(_SAME_BYTES, params).fetchone() is not None

    def instance_paths(self) -> set[str]:
        with self.db.read() as db:
            return {row[0] for row in db.execute("SELECT path FROM instances")}

    def series_instances(self, series_id: int) -> list[InstanceRef]:
        """The latest version of every instance of the series still in the spool, in arrival order."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT i.sop_class_uid, i.sop_instance_uid, s.series_uid, s.study_uid, i.path, i.sha256, i.size"  # noqa: S608  (constant fragments; values are parameters)
                f" FROM instances i JOIN series s ON s.id=i.series_id WHERE i.series_id=? AND {LATEST}"
                " ORDER BY i.id",
                (series_id,),
            ).fetchall()
        return [InstanceRef(*r) for r in rows]

    def census(self, series_id: int, sop_classes: tuple[str, ...]) -> tuple[int, int, str | None]:
        """(kept instances, of them among `sop_classes`, the first one's SOP Class UID) of the series' latest
        versions: what completion needs to know of a series before it reads any of its rows."""
        marks = ",".join("?" * len(sop_classes))
        with self.db.read() as db:
            total, among = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(i.sop_class_uid IN ({marks})), 0) FROM instances i"  # noqa: S608  (constant fragments; values are parameters)
                f" WHERE i.series_id=? AND {LATEST}", (*sop_classes, series_id)).fetchone()
            first = db.execute(f"SELECT i.sop_class_uid FROM instances i WHERE i.series_id=? AND {LATEST}"  # noqa: S608  (constant fragments)
                               " ORDER BY i.id LIMIT 1", (series_id,)).fetchone()
        return int(total), int(among), None if first is None else str(first[0])

    def first_instance(self, series_id: int, sop_classes: tuple[str, ...]) -> InstanceRef | None:
        """The first (in arrival order) kept instance of the series among `sop_classes`: routing reads it."""
        marks = ",".join("?" * len(sop_classes))
        with self.db.read() as db:
            row = db.execute(
                "SELECT i.sop_class_uid, i.sop_instance_uid, s.series_uid, s.study_uid, i.path, i.sha256, i.size"  # noqa: S608  (constant fragments; values are parameters)
                f" FROM instances i JOIN series s ON s.id=i.series_id WHERE i.series_id=? AND {LATEST}"
                f" AND i.sop_class_uid IN ({marks}) ORDER BY i.id LIMIT 1", (series_id, *sop_classes)).fetchone()
        return None if row is None else InstanceRef(*row)

    def kept(self, instance_ids: list[int]) -> list[Kept]:
        """These instances with their image records (a few at a time: SR sources, routing)."""
        out = []
        with self.db.read() as db:
            for instance_id in instance_ids:
                r = db.execute(
                    "SELECT i.id, i.sop_class_uid, i.sop_instance_uid, s.series_uid, s.study_uid, i.path, i.sha256,"  # noqa: S608  (constant fragments; values are parameters)
                    f" i.size, {IMAGE_COLUMNS} FROM instances i JOIN series s ON s.id=i.series_id"
                    " LEFT JOIN images g ON g.instance_id=i.id WHERE i.id=?", (instance_id,)).fetchone()
                if r is not None:
                    out.append(Kept(int(r[0]), InstanceRef(*r[1:8]), image_of(*r[8:11])))
        return out

    def evidence(self, series_id: int, sop_classes: tuple[str, ...]) -> list[Evidence]:
        """Every kept instance of the series among `sop_classes` (latest versions), in arrival order."""
        marks = ",".join("?" * len(sop_classes))
        with self.db.read() as db:
            rows = db.execute(
                "SELECT i.id, i.sop_class_uid, i.sop_instance_uid, json_extract(g.attrs, '$.StudyInstanceUID'),"  # noqa: S608  (constant fragments; values are parameters)
                " json_extract(g.attrs, '$.InstanceNumber') FROM instances i LEFT JOIN images g ON g.instance_id=i.id"
                f" WHERE i.series_id=? AND {LATEST} AND i.sop_class_uid IN ({marks}) ORDER BY i.id",
                (series_id, *sop_classes)).fetchall()
        same: dict[str | None, str | None] = {}  # one string per distinct class and study UID
        return [Evidence(int(r[0]), str(same.setdefault(r[1], r[1])), r[2], same.setdefault(r[3], r[3]),
                         None if r[4] is None else str(r[4])) for r in rows]

    # ---- retention ----------------------------------------------------------------------------
    def purgeable_series(self, before: float, limit: int = 100) -> list[tuple[int, str]]:
        """(id, UID) of series whose every job is delivered, last changed before `before`, with files kept."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT s.id, s.series_uid FROM series s"
                " WHERE EXISTS (SELECT 1 FROM instances i WHERE i.series_id=s.id AND i.path != '')"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_id=s.id AND j.state != 'delivered')"
                " AND (SELECT MAX(j.updated_at) FROM jobs j WHERE j.series_id=s.id) < ? LIMIT ?",
                (before, limit),
            ).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def purge_series(self, series_id: int, before: float) -> list[tuple[str, int]]:
        """Mark a series' kept files purged, durably, if it is still purgeable; returns (path, size) to delete.

        Checked again and marked in one transaction under the database lock that ingest takes, so an
        instance arriving meanwhile either lands before (the series is no longer purgeable) or after
        (its file is not in the list). Committed with a full fsync before any file is deleted: after a
        power cut no row points at a deleted file.
        """
        with self.db.lock:
            self.db.conn.execute("PRAGMA synchronous=FULL")
            try:
                with self.db.tx() as db:
                    still = db.execute(
                        "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE series_id=? AND state != 'delivered')"
                        " AND (SELECT MAX(updated_at) FROM jobs WHERE series_id=?) < ?",
                        (series_id, series_id, before),
                    ).fetchone()[0]
                    if not still:
                        return []
                    files = db.execute(
                        "SELECT path, size FROM instances WHERE series_id=? AND path != ''", (series_id,)
                    ).fetchall()
                    db.execute("UPDATE instances SET path='' WHERE series_id=? AND path != ''", (series_id,))
                    # image records serve only kept files (preprocessing, evidence): ~1 KB each, gone with them;
                    # the instance rows stay, small, so a resend is known for a duplicate
                    db.execute("DELETE FROM images WHERE instance_id IN (SELECT id FROM instances WHERE series_id=?)",
                               (series_id,))
                    # the series can no longer be re-analysed: its images' model outputs go with its files
                    if db.execute("SELECT 1 FROM sqlite_master WHERE name='outputs'").fetchone():
                        db.execute("DELETE FROM outputs WHERE instance_id IN"
                                   " (SELECT id FROM instances WHERE series_id=?)", (series_id,))
            finally:
                self.db.conn.execute("PRAGMA synchronous=NORMAL")
        return [(str(p), int(n)) for p, n in files]

    def is_purged(self, sop_instance_uid: str, sha256: str) -> bool:
        """This content was stored once and its file deleted by retention."""
        with self.db.read() as db:
            row = db.execute("SELECT path FROM instances WHERE sop_instance_uid=? AND sha256=?",
                             (sop_instance_uid, sha256)).fetchone()
        return row is not None and row[0] == ""

    def series_was_purged(self, series_id: int) -> bool:
        with self.db.read() as db:
            return db.execute("SELECT 1 FROM instances WHERE series_id=? AND path='' LIMIT 1",
                              (series_id,)).fetchone() is not None


def image_of(syntax: str | None, pixel_offset: int | None, attrs: str | None) -> ImageRecord | None:
    """The image record of a row selected with IMAGE_COLUMNS (None: ingest kept none; read the header)."""
    if syntax is None or attrs is None:
        return None
    return ImageRecord(json.loads(attrs), syntax, pixel_offset)
