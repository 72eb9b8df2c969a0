"""Audit log segments on disk: naming, reading (plain or gzip) and compressing, crash-safe.

The active segment is `audit.jsonl` (the configured path). When it would grow past
`audit.segment_bytes` it ends with a seal, is renamed `audit-<first seq, 12 digits>.jsonl`, and a
background thread compresses it to `.jsonl.gz` (tmp, fsync, rename, then the plain file goes). Each
segment's first line continues the chain from the previous segment's last hash, so a reader walks
them in name order as one chain.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from edge_ai.spool.store import fsync_dir


@dataclass(frozen=True)
class Segment:
    first_seq: int  # 0 for the active segment until its first line is read
    path: Path
    active: bool

    @property
    def name(self) -> str:
        return self.path.name


def closed_name(active: Path, first_seq: int) -> Path:
    return active.with_name(f"{active.stem}-{first_seq:012d}{active.suffix}")


def _pattern(active: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(active.stem)}-(\d{{12}}){re.escape(active.suffix)}(\.gz)?$")


def closed_segments(active: Path) -> list[Segment]:
    """Closed segments, oldest first; where a crash left both plain and .gz, the .gz (complete by
    construction) is the one listed."""
    found: dict[int, Path] = {}
    pattern = _pattern(active)
    try:
        names = os.listdir(active.parent)
    except FileNotFoundError:
        return []
    for name in names:
        m = pattern.match(name)
        if m:
            seq = int(m.group(1))
            if m.group(2) or seq not in found:
                found[seq] = active.parent / name
    return [Segment(seq, found[seq], False) for seq in sorted(found)]


def all_segments(active: Path) -> list[Segment]:
    """Closed segments then the active one (if it exists)."""
    segs = closed_segments(active)
    if active.exists():
        first = first_entry(active)
        segs.append(Segment(int(first["seq"]) if first else 0, active, True))
    return segs


def open_segment(path: Path) -> IO[bytes]:
    """Binary reader for a plain or gzip segment; a plain one compressed meanwhile is found as .gz."""
    try:
        return cast(IO[bytes], gzip.open(path, "rb")) if path.suffix == ".gz" else path.open("rb")
    except FileNotFoundError:
        if path.suffix != ".gz":
            return cast(IO[bytes], gzip.open(path.with_name(path.name + ".gz"), "rb"))
        raise


def first_entry(path: Path) -> dict[str, Any] | None:
    """The first complete line, parsed (cheap even for .gz: only its first block is inflated)."""
    try:
        with open_segment(path) as f:
            raw = f.readline()
    except (OSError, EOFError):
        return None
    if not raw.endswith(b"\n"):
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def last_entry(path: Path) -> dict[str, Any] | None:
    """The last complete line, parsed (reads the whole segment: used at start and by retention only)."""
    last = b""
    with open_segment(path) as f:
        for raw in f:
            if raw.endswith(b"\n"):
                last = raw
    return json.loads(last) if last else None


def lines(path: Path, offset: int = 0) -> Generator[tuple[int, bytes], None, None]:
    """(byte offset, raw line) from `offset`; a final line without a newline is yielded as is."""
    with open_segment(path) as f:
        if offset:
            f.seek(offset)
        pos = offset
        for raw in f:
            yield pos, raw
            pos += len(raw)


def tidy(active: Path) -> None:
    """After a crash: drop half-written .gz.tmp files and plain segments whose .gz is complete."""
    pattern = _pattern(active)
    for name in os.listdir(active.parent):
        path = active.parent / name
        torn = name.endswith(".gz.tmp") and pattern.match(name[: -len(".tmp")])
        done = pattern.match(name) and not name.endswith(".gz") and (active.parent / (name + ".gz")).exists()
        if torn or done:
            path.unlink(missing_ok=True)


def compress(segment: Path) -> Path:
    """gzip a closed plain segment durably, then remove the plain file; returns the .gz path."""
    target = segment.with_name(segment.name + ".gz")
    tmp = segment.with_name(segment.name + ".gz.tmp")
    with segment.open("rb") as src, tmp.open("wb") as raw_out:
        with gzip.GzipFile(filename=segment.name, mode="wb", fileobj=raw_out, mtime=0) as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
        raw_out.flush()
        os.fsync(raw_out.fileno())
    os.replace(tmp, target)
    fsync_dir(segment.parent)
    segment.unlink()
    fsync_dir(segment.parent)
    return target
