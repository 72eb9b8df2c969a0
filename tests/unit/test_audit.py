"""edge_ai.observability.audit: the hash chain an auditor checks with `edge-ai audit verify`."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_ai.observability import audit
from edge_ai.observability.audit import AuditLog, verify


def make_log(path: Path, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.record("instance.stored", sop_instance_uid=f"1.2.3.{i}", bytes=1000 + i, status=0)
    log.close()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_chain_of_records_verifies(tmp_path: Path) -> None:
    """An untouched log verifies, with one JSON line per record and consecutive seq numbers."""
    path = tmp_path / "audit" / "audit.jsonl"
    make_log(path, 5)
    result = verify(path)
    assert result.ok and result.lines == 5 and result.bad_line is None
    entries = [json.loads(raw) for raw in lines(path)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] == audit.GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert entries[2]["event"] == "instance.stored" and entries[2]["sop_instance_uid"] == "1.2.3.2"
    assert entries[0]["time"].endswith("Z")


def test_none_fields_are_left_out(tmp_path: Path) -> None:
    """Fields passed as None do not clutter the line."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record("job.state", job=1, reason=None)
    log.close()
    entry = json.loads(path.read_bytes())
    assert entry["job"] == 1 and "reason" not in entry


@pytest.mark.parametrize("field", ["seq", "time", "event", "prev", "sop_instance_uid", "bytes", "hash"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_editing_any_field_of_line_k_is_reported_at_k(tmp_path: Path, field: str, k: int) -> None:
    """Changing any value on line k makes verify fail and name line k."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 5)
    raw = lines(path)
    entry = json.loads(raw[k - 1])
    value = entry[field]
    entry[field] = value + 1 if isinstance(value, int) else value[:-1] + ("0" if value[-1] != "0" else "1")
    raw[k - 1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(raw))
    result = verify(path)
    assert not result.ok
    assert result.bad_line == k


def test_adding_a_field_to_a_line_is_reported(tmp_path: Path) -> None:
    """Inserting a key into line 2 (e.g. a forged status) breaks the chain at line 2."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 4)
    raw = lines(path)
    entry = json.loads(raw[1])
    entry["note"] = "forged"
    raw[1] = json.dumps(entry).encode() + b"\n"
    path.write_bytes(b"".join(raw))
    assert verify(path).bad_line == 2


@pytest.mark.parametrize("k", [1, 2, 4])
def test_deleting_a_line_is_reported_at_its_position(tmp_path: Path, k: int) -> None:
    """Removing line k makes verify name line k (the line that now sits there)."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 5)
    raw = lines(path)
    del raw[k - 1]
    path.write_bytes(b"".join(raw))
    result = verify(path)
    assert not result.ok and result.bad_line == k


def test_reordering_lines_is_reported_at_the_first_moved_line(tmp_path: Path) -> None:
    """Swapping lines 3 and 4 makes verify name line 3."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 5)
    raw = lines(path)
    raw[2], raw[3] = raw[3], raw[2]
    path.write_bytes(b"".join(raw))
    result = verify(path)
    assert not result.ok and result.bad_line == 3


def test_garbage_line_is_reported(tmp_path: Path) -> None:
    """A line that is not JSON is named, not a crash of the verifier."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    raw = lines(path)
    raw.insert(1, b"not json\n")
    path.write_bytes(b"".join(raw))
    result = verify(path)
    assert not result.ok and result.bad_line == 2


def test_missing_log_does_not_verify(tmp_path: Path) -> None:
    """An absent log is reported as unreadable, never as intact."""
    result = verify(tmp_path / "nope.jsonl")
    assert not result.ok and "cannot read" in result.reason


def test_reopening_continues_seq_and_chain(tmp_path: Path) -> None:
    """After a restart the log carries on from the last seq and hash; the whole file verifies."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    last = json.loads(lines(path)[-1])
    log = AuditLog(path)
    log.record("node.start")
    log.close()
    entry = json.loads(lines(path)[-1])
    assert entry["seq"] == 4 and entry["prev"] == last["hash"]
    assert verify(path).ok and verify(path).lines == 4


@pytest.mark.parametrize("keep", [1, 20, -2])
def test_torn_last_line_is_dropped_on_reopen(tmp_path: Path, keep: int) -> None:
    """A line half-written when the power went is cut off at restart and the chain still verifies."""
    path = tmp_path / "audit.jsonl"
    make_log(path, 3)
    raw = lines(path)
    intact = b"".join(raw[:2])
    path.write_bytes(intact + raw[2][:keep])
    log = AuditLog(path)
    log.record("node.start")
    log.close()
    result = verify(path)
    assert result.ok and result.lines == 3
    assert json.loads(lines(path)[-1])["event"] == "node.start"
    assert path.read_bytes().startswith(intact)


def test_torn_only_line_restarts_the_chain(tmp_path: Path) -> None:
    """A crash during the very first write leaves a log that still starts from genesis."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"seq":1,"ti')
    log = AuditLog(path)
    log.record("node.start")
    log.close()
    assert verify(path).ok
    assert json.loads(path.read_bytes())["prev"] == audit.GENESIS


def test_concurrent_writers_keep_a_valid_chain(tmp_path: Path) -> None:
    """Records from many threads at once all land, each once, and the chain verifies."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    threads_n, per_thread = 8, 40

    def work(t: int) -> None:
        for i in range(per_thread):
            log.record("job.state", thread=t, i=i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    result = verify(path)
    assert result.ok and result.lines == threads_n * per_thread
    seen = {(e["thread"], e["i"]) for e in map(json.loads, lines(path))}
    assert len(seen) == threads_n * per_thread


@pytest.mark.parametrize("name", ["seq", "time", "prev", "hash"])
def test_reserved_field_names_cannot_corrupt_the_chain(tmp_path: Path, name: str) -> None:
    """A caller passing a field named like a chain field is refused instead of breaking verification."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record("node.start")
    with pytest.raises(ValueError, match=name):
        log.record("inference", **{name: "x"})
    log.record("node.stop")
    log.close()
    assert verify(path).ok and verify(path).lines == 2


def test_failed_write_leaves_no_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way (disk full) is rolled back; later records keep a valid chain."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record("node.start")
    real_write = audit.os.write

    def half_then_enospc(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit.os, "write", half_then_enospc)
    with pytest.raises(OSError):
        log.record("instance.stored", sop_instance_uid="1.2.3")
    monkeypatch.setattr(audit.os, "write", real_write)
    log.record("node.stop")
    log.close()
    result = verify(path)
    assert result.ok and result.lines == 2
    assert [json.loads(r)["event"] for r in lines(path)] == ["node.start", "node.stop"]


def test_group_commit_writes_every_line_at_once_and_fsyncs_in_groups(tmp_path: Path, monkeypatch: Any) -> None:
    """With a sync interval, each line is in the file when record() returns, and fsyncs come in groups."""
    from edge_ai.observability import audit as audit_mod

    calls = []
    real = audit_mod.os.fsync
    monkeypatch.setattr(audit_mod.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    path = tmp_path / "audit.jsonl"
    log = audit_mod.AuditLog(path, sync_interval_s=0.05)
    for i in range(200):
        log.record("instance.stored", n=i)
        if i == 0:
            assert len(path.read_text().splitlines()) == 1  # a killed process would not lose it
    log.close()
    assert len(path.read_text().splitlines()) == 200
    assert audit_mod.verify(path).ok
    assert 1 <= len(calls) <= 20
