"""Sealed, rotated audit log: what `edge-ai audit verify` says after an auditor's (or attacker's) edits."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge_ai.observability import audit_segments as segs
from edge_ai.observability.audit import GENESIS, AuditLog, _line_hash
from edge_ai.observability.audit_seals import SealStore, load_key, seal_mac
from edge_ai.observability.audit_verify import verify

KEY = b"k" * 32


def sealed_log(tmp_path: Path, n: int, *, seal_every: int = 10, segment_bytes: int = 0,
               close: bool = True) -> tuple[Path, SealStore, AuditLog]:
    path = tmp_path / "audit" / "audit.jsonl"
    store = SealStore(tmp_path / "audit" / "seals.sqlite3")
    log = AuditLog(path, key=KEY, seal_every=seal_every, seals=store, segment_bytes=segment_bytes)
    for i in range(n):
        log.record("instance.stored", sop_instance_uid=f"1.2.3.{i}", study_uid="1.2.9", bytes=1000 + i)
    if close:
        log.close()
    return path, store, log


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(r) for r in path.read_bytes().splitlines()]


def rewrite(path: Path, rows: list[dict[str, Any]], key: bytes | None = None) -> None:
    """What someone who can write the file does: re-chain every line (re-sealing only with `key`)."""
    prev, out = GENESIS, []
    for seq, row in enumerate(rows, start=1):
        row = {k: v for k, v in row.items() if k != "hash"}
        row["prev"], row["seq"] = prev, seq
        if row["event"] == "audit.seal":
            row["sealed_hash"], row["sealed_seq"] = prev, seq - 1
            row["hmac"] = seal_mac(key, row["sealed_seq"], prev) if key else row["hmac"]
        row["hash"] = prev = _line_hash(prev, {k: v for k, v in row.items() if k != "hash"})
        out.append(json.dumps(row, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize("fast", [False, True])
def test_sealed_log_verifies_and_every_seal_is_checked(tmp_path: Path, fast: bool) -> None:
    """An untouched sealed log verifies; seals come every seal_every lines and at close."""
    path, store, _ = sealed_log(tmp_path, 25)
    seals = [e for e in entries(path) if e["event"] == "audit.seal"]
    assert [s["sealed_seq"] for s in seals] == [10, 21, 27]  # 10 lines, 10 more + the first seal, close
    assert seals[-1]["reason"] == "stop" and store.newest().seq == entries(path)[-1]["seq"]
    result = verify(path, KEY, store, fast=fast)
    assert result.ok, result
    assert result.unsealed == 0
    assert result.seals == (1 if fast else 3)


@pytest.mark.parametrize("fast", [False, True])
def test_cutting_the_last_lines_is_reported(tmp_path: Path, fast: bool) -> None:
    """Removing the last three lines (a valid prefix of the chain) no longer passes as intact."""
    path, store, _ = sealed_log(tmp_path, 25)
    rows = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(rows[:-3]))
    assert verify(path).ok  # the chain alone cannot tell
    result = verify(path, KEY, store, fast=fast)
    assert not result.ok and "cut back" in result.reason, result


def test_rewriting_without_the_key_is_reported(tmp_path: Path) -> None:
    """A forged value, re-chained line by line by someone without the key, fails at the first seal after it."""
    path, store, _ = sealed_log(tmp_path, 25)
    rows = entries(path)
    rows[3]["bytes"] = 1
    rewrite(path, rows)
    result = verify(path, KEY, store)
    assert not result.ok and "seal does not verify" in result.reason and result.bad_line == 11, result


def test_rewriting_with_seals_stripped_is_reported(tmp_path: Path) -> None:
    """Dropping every seal line and re-chaining the rest is caught by the seal recorded outside the log."""
    path, store, _ = sealed_log(tmp_path, 25)
    rewrite(path, [r for r in entries(path) if r["event"] != "audit.seal"])
    for fast in (False, True):
        result = verify(path, KEY, store, fast=fast)
        assert not result.ok and ("rewritten" in result.reason or "cut back" in result.reason), result


def test_wrong_seal_is_reported_at_its_line(tmp_path: Path) -> None:
    """A seal made with another key is named, with its line, even when the chain itself is intact."""
    path, store, _ = sealed_log(tmp_path, 25)
    rows = entries(path)
    rows[10]["hmac"] = seal_mac(b"x" * 32, rows[10]["sealed_seq"], rows[10]["sealed_hash"])
    rewrite(path, rows)
    result = verify(path, KEY, store)
    assert not result.ok and result.bad_line == 11 and "HMAC" in result.reason, result


def test_verify_with_another_key_names_both_keys(tmp_path: Path) -> None:
    """Verifying with a different key says the seals were made with another key."""
    path, store, _ = sealed_log(tmp_path, 5)
    result = verify(path, b"z" * 32, store)
    assert not result.ok and "not the configured key" in result.reason


def test_unsealed_tail_after_a_crash_is_sealed_at_next_start(tmp_path: Path) -> None:
    """Lines written after the last seal by a node that was killed get a seal when the log reopens."""
    path, store, _ = sealed_log(tmp_path, 15, close=False)  # never closed: like kill -9
    assert verify(path, KEY, store).unsealed == 5
    again = AuditLog(path, key=KEY, seal_every=10, seals=store)
    assert entries(path)[-1]["event"] == "audit.seal" and entries(path)[-1]["reason"] == "start"
    again.close()
    assert verify(path, KEY, store).ok


def rotated(tmp_path: Path, n: int = 300) -> tuple[Path, SealStore, AuditLog]:
    path, store, log = sealed_log(tmp_path, n, segment_bytes=8192, close=False)
    log.maintain()
    log.close()
    return path, store, log


def test_rotation_keeps_segments_small_compressed_and_chained(tmp_path: Path) -> None:
    """A long log becomes gzip segments of at most segment_bytes, each ending with a seal; verify walks all."""
    path, store, _ = rotated(tmp_path)
    closed = segs.closed_segments(path)
    assert len(closed) >= 5 and all(s.path.suffix == ".gz" for s in closed)
    prev_last: dict[str, Any] | None = None
    for seg in closed:
        raw = gzip.decompress(seg.path.read_bytes())
        assert len(raw) <= 8192
        rows = [json.loads(r) for r in raw.splitlines()]
        assert rows[-1]["event"] == "audit.seal" and rows[0]["seq"] == seg.first_seq
        if prev_last is not None:
            assert rows[0]["event"] == "audit.segment" and rows[0]["prev"] == prev_last["hash"]
        prev_last = rows[-1]
    result = verify(path, KEY, store)
    assert result.ok and result.lines == entries(path)[-1]["seq"], result
    assert verify(path, KEY, store, fast=True).ok


@pytest.mark.parametrize("fast", [False, True])
def test_deleted_segment_is_reported(tmp_path: Path, fast: bool) -> None:
    """Deleting a segment from the middle makes verify name the lines (or segment) that are gone."""
    path, store, _ = rotated(tmp_path)
    closed = segs.closed_segments(path)
    closed[2].path.unlink()
    result = verify(path, KEY, store, fast=fast)
    assert not result.ok and "missing" in result.reason, result


def test_deleting_the_oldest_segment_unaudited_is_reported(tmp_path: Path) -> None:
    """Only audited retention may remove the start of the log."""
    path, store, _ = rotated(tmp_path)
    segs.closed_segments(path)[0].path.unlink()
    result = verify(path, KEY, store)
    assert not result.ok and "without an audited retention deletion" in result.reason, result


def test_retention_deletes_old_segments_and_audits_it(tmp_path: Path) -> None:
    """Segments past retention_days are deleted, each deletion is an audit line, and the rest verifies."""
    path, store, _ = rotated(tmp_path)
    before = segs.closed_segments(path)
    log = AuditLog(path, key=KEY, seal_every=10, seals=store, segment_bytes=8192, retention_days=1)
    assert log.maintain() == []  # nothing is a day old yet
    deleted = log.maintain(now=time.time() + 2 * 86400)
    log.close()
    assert deleted == [s.name for s in before]
    everything = [json.loads(raw) for seg in segs.all_segments(path) for _, raw in segs.lines(seg.path)]
    audited = [e for e in everything if e["event"] == "audit.retention"]
    assert [e["segment"] for e in audited] == deleted
    result = verify(path, KEY, store)
    assert result.ok, result


def test_fast_verify_rehashes_only_after_the_newest_seal(tmp_path: Path) -> None:
    """Fast verify trusts what lies before the newest recorded seal; the full one still catches an edit there."""
    path, store, _ = sealed_log(tmp_path, 25)
    rows = path.read_bytes().splitlines(keepends=True)
    rows[2] = rows[2].replace(b'"bytes":1002', b'"bytes":9999')
    path.write_bytes(b"".join(rows))
    assert verify(path, KEY, store, fast=True).ok
    full = verify(path, KEY, store)
    assert not full.ok and full.bad_line == 3


def test_torn_line_rollback_and_crash_between_rotation_steps(tmp_path: Path) -> None:
    """A crash after a segment was renamed but before the next one began leaves a log that reopens and verifies."""
    path, store, _ = sealed_log(tmp_path, 50, segment_bytes=8192, close=False)
    path.rename(segs.closed_name(path, entries(path)[0]["seq"]))  # as _rotate does, then "crash"
    again = AuditLog(path, key=KEY, seal_every=10, seals=store, segment_bytes=8192)
    again.record("node.start")
    again.close()
    assert entries(path)[0]["event"] == "audit.segment"
    assert verify(path, KEY, store).ok


def test_generated_key_is_private_and_stable(tmp_path: Path) -> None:
    """With no key configured, one is made at first start (0600) and the same one is read afterwards."""
    key = load_key(None, tmp_path)
    path = tmp_path / "keys" / "audit-seal.key"
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) == 64
    assert load_key(None, tmp_path) == key
    assert hashlib.sha256(key).hexdigest() not in path.read_text()


def test_node_start_checks_the_log_and_audits_a_failure(tmp_path: Path) -> None:
    """A log cut back while the node was down is found at the next start and audited as
    audit.verify_failed (which goes to the repository as a Security Alert)."""
    from edge_ai.config import Config
    from edge_ai.observability.audit_trail import AuditTrail

    class Log:
        def __init__(self) -> None:
            self.lines: list[tuple[str, dict[str, Any]]] = []

        def info(self, event: str, **kw: Any) -> None:
            self.lines.append((event, kw))

        error = warning = info

    cfg = Config.model_validate({"storage": {"root": str(tmp_path)}, "audit": {"seal_every": 5}})
    log = Log()
    trail = AuditTrail(cfg, log)
    assert trail.start().ok
    for i in range(12):
        trail.record("instance.stored", sop_instance_uid=f"1.2.{i}")
    trail.close()
    assert any(e == "audit_sealed" for e, _ in log.lines)  # the journal's copy of each seal
    rows = cfg.audit_path.read_bytes().splitlines(keepends=True)
    cfg.audit_path.write_bytes(b"".join(rows[:-4]))
    trail = AuditTrail(cfg, log)
    result = trail.start()
    trail.close()
    assert not result.ok and "cut back" in result.reason
    failed = [e for e in entries(cfg.audit_path) if e["event"] == "audit.verify_failed"]
    assert failed and "cut back" in failed[0]["reason"]


def test_atna_reader_follows_the_log_across_rotation_and_compression(tmp_path: Path) -> None:
    """The ATNA sender's reader sees every line once, in order, while segments rotate and compress under it."""
    from edge_ai.observability.atna_sender import LogReader

    path, _, log = sealed_log(tmp_path, 40, segment_bytes=8192, close=False)
    reader = LogReader(path, 0)
    seen = [e["seq"] for e in reader.read(25)]
    for i in range(200):  # several rotations while the reader sits in what was the active segment
        log.record("instance.stored", sop_instance_uid=f"9.9.{i}")
    log.maintain()
    while batch := reader.read(37):
        seen += [e["seq"] for e in batch]
    log.close()
    seen += [e["seq"] for e in reader.read(1000)]
    assert len(segs.closed_segments(path)) >= 3
    assert seen == list(range(1, log.head[0] + 1))
    later = LogReader(path, 100)  # a restart from a cursor inside a compressed segment
    assert [e["seq"] for e in later.read(5)] == [101, 102, 103, 104, 105]
