"""`edge-ai audit verify`: the checks an auditor relies on, full or fast.

Full: every line of every segment is re-hashed (chain, seq), every seal's HMAC is checked, the log
must start at seq 1 or where an audited retention deletion says it does, and it must reach the
newest seal recorded outside it (seals.sqlite3). Fast: the newest recorded seal is found at its
recorded place and its HMAC checked, every segment's link to its predecessor is checked from each
segment's first line, and only the lines after that seal are re-hashed: its cost does not grow with
the log. A fast pass trusts what earlier full passes saw before the seal; auditors run the full one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_ai.observability import audit_segments as segs
from edge_ai.observability.audit import GENESIS, RETENTION_EVENT, SEAL_EVENT, SEGMENT_EVENT, _line_hash
from edge_ai.observability.audit_seals import Seal, SealStore, key_id, mac_ok


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    lines: int  # lines checked
    bad_line: int | None = None  # 1-based line number within `segment` (None in a fast pass)
    reason: str = ""
    segment: str = ""
    seals: int = 0  # seals whose HMAC was checked
    unsealed: int = 0  # lines after the last seal
    mode: str = "full"
    bad_seq: int | None = None  # the seq of the line where it broke, when known


class _Broken(Exception):
    def __init__(self, reason: str, segment: str = "", line: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.segment, self.line = reason, segment, line


@dataclass
class _Walk:
    """Chain state while lines are checked in order."""

    key: bytes | None
    newest: Seal | None
    prev: str | None = None  # None: take the first line's prev as given
    expected: int | None = None
    lines: int = 0
    seals: int = 0
    last_seal: int = 0
    start: tuple[int, str] | None = None
    start_segment: str = ""
    seen_newest: bool = False
    retained: set[tuple[int, str]] = field(default_factory=set)
    current: int | None = None  # seq of the line being checked

    def segment(self, seg: segs.Segment, offset: int = 0, first_line: int = 1) -> None:
        """Check the lines of one segment from `offset` (line number `first_line` there)."""
        rows = segs.lines(seg.path, offset)
        for number, (_, raw) in enumerate(rows, start=first_line):
            if not raw.endswith(b"\n"):
                if seg.active and next(rows, None) is None:
                    return  # a crash mid-write; the node cuts it at its next start
                raise _Broken("incomplete line", seg.name, number)
            self.line(raw, seg.name, number)

    def line(self, raw: bytes, segment: str, number: int) -> None:
        try:
            entry: dict[str, Any] = json.loads(raw)
            claimed = str(entry.pop("hash"))
            seq = int(entry["seq"])
        except (ValueError, KeyError, AttributeError, TypeError):
            self.current = None if self.expected is None else self.expected
            raise _Broken("not a JSON audit line", segment, number) from None
        self.current = seq
        if self.prev is None:
            self.prev, self.expected = str(entry.get("prev")), seq
            self.start, self.start_segment = (seq, self.prev), segment
            if seq == 1 and self.prev != GENESIS:
                raise _Broken("the first line does not start from genesis", segment, number)
        if self.expected is not None and seq > self.expected and number == 1:
            raise _Broken(f"lines {self.expected}..{seq - 1} are missing (a segment deleted?)", segment, number)
        if entry.get("prev") != self.prev:
            raise _Broken("prev does not match the previous line's hash", segment, number)
        if seq != self.expected:
            raise _Broken(f"seq {entry.get('seq')} where {self.expected} expected", segment, number)
        if _line_hash(self.prev, entry) != claimed:
            raise _Broken("hash does not match the line's content", segment, number)
        event = entry.get("event")
        if event == SEAL_EVENT:
            self.seal(entry, segment, number)
        elif event == RETENTION_EVENT:
            self.retained.add((int(entry.get("last_seq", 0)), str(entry.get("last_hash"))))
        if self.newest is not None and seq == self.newest.seq:
            if claimed != self.newest.hash:
                raise _Broken(f"seq {seq} is not the line the seal record names (the log was rewritten)",
                              segment, number)
            self.seen_newest = True
        self.prev, self.expected = claimed, seq + 1
        self.lines += 1

    def seal(self, entry: dict[str, Any], segment: str, number: int) -> None:
        seq = int(entry["seq"])
        if entry.get("sealed_seq") != seq - 1 or entry.get("sealed_hash") != entry.get("prev"):
            raise _Broken("seal does not cover the line before it", segment, number)
        if self.key is not None:
            if entry.get("key_id") != key_id(self.key):
                raise _Broken(f"seal made with key {entry.get('key_id')}, not the configured key "
                              f"{key_id(self.key)}", segment, number)
            if not mac_ok(self.key, seq - 1, str(entry.get("prev")), str(entry.get("hmac"))):
                raise _Broken("seal does not verify (HMAC mismatch)", segment, number)
            self.seals += 1
        self.last_seal = seq

    def result(self, mode: str) -> VerifyResult:
        last = (self.expected or 1) - 1
        return VerifyResult(True, self.lines, seals=self.seals, unsealed=last - self.last_seal if self.lines else 0,
                            mode=mode)


def verify(path: Path, key: bytes | None = None, seals: SealStore | None = None, fast: bool = False) -> VerifyResult:
    """Check the log at `path` (the active segment) and its closed segments; see the module doc."""
    segments = segs.all_segments(path)
    if not segments:
        return VerifyResult(False, 0, None, f"cannot read {path}: No such file or directory")
    newest = seals.newest() if seals is not None else None
    walk = _Walk(key, newest)
    mode = "fast" if fast and newest is not None else "full"
    try:
        if mode == "fast":
            assert newest is not None
            _fast(walk, segments, newest)
        else:
            for seg in segments:
                walk.segment(seg)
            _ends(walk)
    except _Broken as exc:
        line = exc.line if mode == "full" else None
        return VerifyResult(False, walk.lines, line, exc.reason, exc.segment, walk.seals, mode=mode,
                            bad_seq=walk.current if exc.line else None)
    except OSError as exc:
        return VerifyResult(False, walk.lines, None, f"cannot read: {exc}", mode=mode)
    return walk.result(mode)


def _ends(walk: _Walk) -> None:
    """Where the log starts and ends must be explained: genesis or an audited deletion; the newest seal."""
    if walk.start is not None and walk.start[0] > 1 and (walk.start[0] - 1, walk.start[1]) not in walk.retained:
        raise _Broken(f"the log starts at seq {walk.start[0]}: earlier lines are gone without an audited "
                      "retention deletion", walk.start_segment, 1)
    if walk.newest is not None and not walk.seen_newest:
        last = (walk.expected or 1) - 1
        raise _Broken(f"the log ends at seq {last}, before the newest recorded seal at seq {walk.newest.seq} "
                      "(cut back)")


def _fast(walk: _Walk, segments: list[segs.Segment], newest: Seal) -> None:
    previous: segs.Segment | None = None
    for seg in segments:
        first = segs.first_entry(seg.path)
        linked = previous is not None and first is not None and first.get("event") == SEGMENT_EVENT
        if linked and previous is not None and first is not None and not str(first.get("closed", "")).startswith(
                previous.name.removesuffix(".gz")):
            raise _Broken(f"segment {first.get('closed')} (lines {first.get('first_seq')}.."
                              f"{first.get('last_seq')}) is missing", seg.name, 1)
        previous = seg
    holder = [s for s in segments if s.first_seq == newest.segment_first]
    if not holder:
        raise _Broken(f"the segment holding the newest recorded seal (seq {newest.seq}) is missing")
    start = segments.index(holder[0])
    rows = segs.lines(holder[0].path, newest.offset)
    row = next(rows, None)
    rows.close()
    if row is None or not row[1].endswith(b"\n"):
        raise _Broken(f"the log ends before the newest recorded seal at seq {newest.seq} (cut back)", holder[0].name)
    entry = json.loads(row[1])
    if entry.get("seq") != newest.seq or entry.get("hash") != newest.hash:
        raise _Broken(f"the newest recorded seal (seq {newest.seq}) is not where it was written: the log was "
                      "cut back or rewritten", holder[0].name)
    walk.prev, walk.expected = str(entry["prev"]), newest.seq
    walk.line(row[1], holder[0].name, 0)
    walk.segment(holder[0], newest.offset + len(row[1]), 0)
    for seg in segments[start + 1 :]:
        walk.segment(seg)
