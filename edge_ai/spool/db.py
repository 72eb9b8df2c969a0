"""The node's one SQLite file (WAL, synchronous=NORMAL), shared by the instance index, the job store and
the outbox, each of which owns its own tables.

One connection guarded by one lock: the writers are a handful of threads and every transaction is a
few rows, so a pool would only add ways to deadlock. Work that must follow a commit (telling the
rest of the node that a job changed state) is queued inside the transaction and run after COMMIT,
outside the lock, and dropped on ROLLBACK, so nobody hears of a change that did not happen.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class _Reader:
    """A thread's read-only connection (`Database.glance`); a weak reference finds it at close.

    Closed as its thread ends (the thread's locals go, and this with them): a Python sqlite3 connection
    sits in a reference cycle with its own statement cache, so unclosed it would keep its file handles
    and SQLite's page cache until the garbage collector next ran a full collection."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, uri: str) -> None:
        # used by its own thread only; closed from another by Database.close
        self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)

    def __del__(self) -> None:
        conn = getattr(self, "conn", None)  # None: the connect itself failed
        if conn is not None:
            conn.close()  # closing a closed connection does nothing


class Database:
    def __init__(self, path: Path, on_error: Callable[[BaseException], None] | None = None) -> None:
        """`on_error` hears of a failure in work run after a commit (an audit line that could not be
        written): the committed change stands and its caller is not told it failed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.on_error = on_error
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: commits are not fsync'd (a checkpoint is). Instance files are fsync'd before
        # Success and Ingest.recover_orphans re-indexes any that a power cut rolled back, so the
        # promise holds at a third of the per-instance fsyncs. Process crashes lose nothing.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.lock = threading.RLock()
        self._after: list[Callable[[], None]] = []
        self._depth = 0
        self._readers = threading.local()
        self._open_readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._ro_uri = f"{path.resolve().as_uri()}?mode=ro"
        self._closed = False

    def ensure(self, schema: str, columns: dict[str, list[tuple[str, str]]] | None = None) -> None:
        """Create a component's tables, and add `columns` ({table: [(name, declaration)]}) that an older
        file lacks (a node upgraded in place keeps its spool)."""
        with self.lock:
            self.conn.executescript(schema)
            for table, wanted in (columns or {}).items():
                have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
                for name, declaration in wanted:
                    if name not in have:
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        with self.lock:
            self._closed = True
            for reader in list(self._open_readers):  # so the last close can checkpoint and remove the WAL
                reader.conn.close()
            self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; nested use joins the outer transaction."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK")
                self._after.clear()
                raise
            self._depth = 0
            self.conn.execute("COMMIT")
            after, self._after = self._after, []
        for call in after:
            try:
                call()
            except Exception as exc:  # the change is committed: a failing listener must not undo what it reports
                if self.on_error is None:
                    raise
                self.on_error(exc)

    def after_commit(self, call: Callable[[], None]) -> None:
        """Run `call` once the current transaction has committed (never if it rolls back)."""
        self._after.append(call)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            yield self.conn

    def glance(self, sql: str, params: tuple[object, ...] = ()) -> tuple[object, ...] | None:
        """The first row of a read-only query, on the calling thread's own read connection, outside the
        lock: WAL lets it read the last committed state while another thread writes. For reception's
        checks that a transaction repeats under the lock anyway (a duplicate instance), so that four
        associations do not queue behind the worker's and each other's transactions to ask."""
        reader = getattr(self._readers, "reader", None)
        if reader is None:  # one per thread (an association's), closed with it
            if self._closed:
                raise sqlite3.ProgrammingError("the database is closed")
            reader = _Reader(self._ro_uri)
            self._open_readers.add(reader)
            self._readers.reader = reader
        row = reader.conn.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[dict[str, object]]:
        """A query's rows as dicts keyed by column name."""
        with self.lock:
            cur = self.conn.execute(sql, params)
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
