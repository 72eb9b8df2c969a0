"""Audit events from command-line tools, written into the one hash-chained log without a second writer.

The audit log has one writer, the running node (audit.AuditLog is not safe across processes). A
command such as `edge-ai model promote` or `edge-ai export` therefore leaves its event as a small
JSON file under storage.root/audit-pending/; the node records it on its next tick (within about a
second) and deletes the file. When no node is running, the command records the event itself.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_ai.service import status as node_status

FOLDER = "audit-pending"


def node_pid(root: Path) -> int | None:
    """The pid of the node serving `root`, from its status snapshot, when that process is alive."""
    snapshot = node_status.read(root / node_status.FILENAME)
    if not snapshot:
        return None
    try:
        pid = int(snapshot.get("pid") or 0)
    except (TypeError, ValueError):
        return None
    if pid <= 0 or time.time() - float(snapshot.get("time", 0)) > 6 * node_status.INTERVAL_S:
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def submit(root: Path, audit_path: Path, event: str, **fields: Any) -> str:
    """Record `event`: through the running node when there is one, else directly. Returns which."""
    if node_pid(root) is not None:
        folder = root / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"event": event, "fields": fields, "at": time.time()}, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{time.time_ns():020d}-{os.getpid()}.json")
        return "node"
    from edge_ai.observability.audit import AuditLog

    log = AuditLog(audit_path)
    try:
        log.record(event, **fields)
    finally:
        log.close()
    return "direct"


def drain(root: Path, record: Callable[..., None]) -> int:
    """In the node: record every pending event in the order it was left, then delete it."""
    folder = root / FOLDER
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return 0
    for name in names:
        path = folder / name
        try:
            raw = json.loads(path.read_text())
            event, fields = str(raw["event"]), dict(raw.get("fields") or {})
        except (OSError, ValueError, KeyError, TypeError):
            path.rename(path.with_suffix(".bad"))  # kept for a person to read; never recorded twice
            continue
        try:
            record(event, **fields)
        except ValueError:  # a field the chain reserves: never recordable, so never retried
            path.rename(path.with_suffix(".bad"))
            continue
        path.unlink(missing_ok=True)
    return len(names)
