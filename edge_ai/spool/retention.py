"""Spool retention: the received images of a series are deleted `storage.retention_days` after its
last job was delivered everywhere.

The node is not an archive: the images are in PACS, and what the node made of them (the SRs) stays
in `spool/reports` and in the audit. Only series whose every job is delivered are touched; a failed
job or a dead letter keeps its images until someone has looked. The index rows stay, so a resend of
the same content is still recognised (acknowledged, not processed again); an instance that arrives
later for a purged series opens a new job covering the instances still kept.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_ai.spool.queue import Queue
from edge_ai.spool.store import fsync_dir

DAY_S = 86400.0


@dataclass(frozen=True)
class Purged:
    series: int
    instances: int
    bytes: int


def purge(queue: Queue, retention_days: float, audit: Callable[..., Any], now: float | None = None) -> Purged:
    """Delete the instance files of every series past retention; `retention_days` 0 keeps everything."""
    if retention_days <= 0:
        return Purged(0, 0, 0)
    cutoff = (time.time() if now is None else now) - retention_days * DAY_S
    series_count = instance_count = freed = 0
    for series_id, series_uid in queue.purgeable_series(cutoff):
        files = queue.series_files(series_id)
        folders = set()
        for _, path, _ in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            folders.add(Path(path).parent)
        for folder in folders:
            with contextlib.suppress(OSError):
                fsync_dir(folder)
        queue.mark_purged([row for row, _, _ in files])
        size = sum(s for _, _, s in files)
        audit("spool.purged", series_uid=series_uid, instances=len(files), bytes=size,
              reason=f"delivered more than storage.retention_days ({retention_days:g}) ago")
        series_count, instance_count, freed = series_count + 1, instance_count + len(files), freed + size
    return Purged(series_count, instance_count, freed)
