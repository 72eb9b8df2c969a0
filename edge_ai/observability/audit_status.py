"""`edge-ai status` lines for the audit trail: newest seal, and the ATNA lag read from disk.

The running node's sender keeps its cursor in seals.sqlite3; what lies after it in the log and is
named by the message table is what the repository has not got yet. Reading it from disk makes the
answer right whether the node runs or not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge_ai.config import Config
from edge_ai.observability import atna
from edge_ai.observability.atna_sender import LogReader, epoch
from edge_ai.observability.audit_seals import open_readonly

_COUNT_LIMIT = 200_000  # lines read at most to count the lag


def _head(active: Path) -> int:
    try:
        with active.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            rows = [r for r in f.read().split(b"\n") if r.strip()]
        return int(json.loads(rows[-1])["seq"]) if rows else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def render(cfg: Config) -> list[str]:
    store = open_readonly(cfg.storage.root / "audit" / "seals.sqlite3")
    if store is None:
        return ["audit: no seal record yet (the node has not run with this config)"]
    try:
        seal = store.newest()
        cursor = store.atna_cursor()
    finally:
        store.close()
    lines = [f"audit: newest seal at seq {seal.seq}" if seal else "audit: no seal yet"]
    if cfg.audit.atna is None:
        return lines
    if cursor is None:
        return [*lines, "ATNA: not started yet"]
    reader = LogReader(cfg.audit_path, cursor)
    ctx = atna.Context(cfg.node.ae_title, "-")
    queued, oldest, read = 0, None, 0
    while read < _COUNT_LIMIT:
        batch = reader.read(5000)
        if not batch:
            break
        read += len(batch)
        for entry in batch:
            if atna.MESSAGES.get(str(entry.get("event"))) is not None and atna.message(entry, ctx) is not None:
                queued += 1
                oldest = oldest or epoch(str(entry.get("time", "")))
    more = "+" if read >= _COUNT_LIMIT else ""
    age = f", oldest {time.time() - oldest:.0f} s old" if oldest else ""
    return [*lines, f"ATNA {cfg.audit.atna.host}:{cfg.audit.atna.port}: {queued}{more} messages queued{age}"
                    f" (sent up to seq {cursor} of {_head(cfg.audit_path)})"]
