"""Reception's read outside the database lock (`Database.glance`): it sees what is committed, never what
a transaction in progress has written, and it does not wait for the lock another thread holds."""

from __future__ import annotations

import gc
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_ai.domain import InstanceRef
from edge_ai.spool.db import Database, _Reader
from edge_ai.spool.index import InstanceIndex


def _ref(uid: str) -> InstanceRef:
    return InstanceRef("1.2.840.10008.5.1.4.1.1.2", uid, "1.2.3.4", "1.2.3", f"/spool/{uid}.dcm", "ab" * 32, 10)


def test_duplicate_check_reads_committed_rows_without_the_lock(tmp_path: Path) -> None:
    db = Database(tmp_path / "spool.sqlite3")
    index = InstanceIndex(db)
    with db.tx() as tx:
        index.add(tx, _ref("1.2.3.4.1"), "CT")
    assert index.has_instance("1.2.3.4.1", "ab" * 32)
    assert not index.has_instance("1.2.3.4.1", "cd" * 32)  # same UID, other bytes: not a duplicate

    inside, leave = threading.Event(), threading.Event()

    def writer() -> None:  # holds the lock in an open transaction, as the worker or another association does
        with db.tx() as tx:
            index.add(tx, _ref("1.2.3.4.2"), "CT")
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(10)
    started = time.monotonic()
    seen_before_commit = index.has_instance("1.2.3.4.2", "ab" * 32)
    waited = time.monotonic() - started
    leave.set()
    thread.join()
    assert waited < 1  # answered while the writer still held the lock
    assert not seen_before_commit  # an uncommitted row is not there yet
    assert index.has_instance("1.2.3.4.2", "ab" * 32)  # and is once committed


def test_close_closes_the_read_connections(tmp_path: Path) -> None:
    """Closing the database closes every thread's read connection too: the last close checkpoints and
    removes the WAL, and nothing reads a closed database."""
    db = Database(tmp_path / "spool.sqlite3")
    index = InstanceIndex(db)
    with db.tx() as tx:
        index.add(tx, _ref("1.2.3.4.1"), "CT")
    answers: list[bool] = []
    ready, leave = threading.Event(), threading.Event()

    def association() -> None:  # still open when the database closes
        answers.append(index.has_instance("1.2.3.4.1", "ab" * 32))
        ready.set()
        leave.wait(10)

    thread = threading.Thread(target=association)
    thread.start()
    assert ready.wait(10)
    assert index.has_instance("1.2.3.4.1", "ab" * 32) and answers == [True]
    db.close()
    leave.set()
    thread.join()
    assert not (tmp_path / "spool.sqlite3-wal").exists()
    with pytest.raises(sqlite3.ProgrammingError):
        db.glance("SELECT 1")



def test_an_ended_threads_read_connection_is_closed_at_once(tmp_path: Path) -> None:
    """An association's read connection is closed when its thread ends, not when the garbage collector
    next comes round (it is off here): its file handles and page cache go with the association."""
    db = Database(tmp_path / "spool.sqlite3")
    index = InstanceIndex(db)
    conns: list[sqlite3.Connection] = []

    def association() -> None:
        index.has_instance("1.2.3.4.1", "ab" * 32)
        conns.append(db._readers.reader.conn)  # the connection this thread opened

    def files() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.disable()
    try:
        thread = threading.Thread(target=association)
        thread.start()
        thread.join()
        opened_by_one = files()
        for _ in range(5):
            thread = threading.Thread(target=association)
            thread.start()
            thread.join()
        with pytest.raises(sqlite3.ProgrammingError):
            conns[0].execute("SELECT 1")  # closed
        assert files() == opened_by_one  # five more associations, no more files held
    finally:
        gc.enable()
        db.close()


def test_a_read_connection_that_could_not_open_goes_quietly(tmp_path: Path) -> None:
    """A glance whose connection cannot be opened raises SQLite's error to its caller, and nothing else
    (no second error from the half-made reader as it goes)."""
    unraisable: list[object] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with pytest.raises(sqlite3.OperationalError):
            _Reader(f"{(tmp_path / 'absent.sqlite3').as_uri()}?mode=ro")
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
