"""Spool retention: the received images of a series are deleted `storage.retention_days` after its
last job was delivered everywhere.

The node is not an archive: the images are in PACS, and what the node made of them (the SRs) stays
in `spool/reports` and in the audit. Only series whose every job is delivered are touched; a failed
job or a dead letter keeps its images until someone has looked. The index rows stay, so a resend of
the same content is still recognised (acknowledged, not processed again); a new instance that
arrives later for a purged series is kept, but its job fails with the reason instead of making a
result from a fragment of the series that would supersede the whole series' result.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_ai.spool.index import InstanceIndex
from edge_ai.spool.store import fsync_dir

DAY_S = 86400.0


@dataclass(frozen=True)
class Purged:
    series: int
    instances: int
    bytes: int
    more: bool = False  # the time budget ran out with series left: call again


def purge(index: InstanceIndex, retention_days: float, audit: Callable[..., Any], now: float | None = None,
          budget_s: float = 0.5, log: Any = None) -> Purged:
    """Delete the instance files of series past retention, for at most about `budget_s` (the caller's
    loop also feeds the watchdog); `retention_days` 0 keeps everything."""
    if retention_days <= 0:
        return Purged(0, 0, 0)
    cutoff = (time.time() if now is None else now) - retention_days * DAY_S
    until = time.monotonic() + budget_s
    series_count = instance_count = freed = 0
    folders: set[Path] = set()
    for series_id, series_uid in index.purgeable_series(cutoff):
        if time.monotonic() > until:
            return _done(folders, Purged(series_count, instance_count, freed, more=True))
        files = index.purge_series(series_id, cutoff)  # marked (durably) before anything is deleted
        if not files:
            continue
        size = sum(n for _, n in files)
        audit("spool.purged", series_uid=series_uid, instances=len(files), bytes=size,
              reason=f"delivered more than storage.retention_days ({retention_days:g}) ago")
        for path, _ in files:
            try:
                os.unlink(path)
            except FileNotFoundError:  # already gone: a purge a crash interrupted
                continue
            except OSError as exc:  # left for Ingest.recover_orphans, which removes purged files at start
                if log is not None:
                    log.warning("spool_purge_unlink_failed", error=exc.strerror)
            folders.add(Path(path).parent)
        series_count, instance_count, freed = series_count + 1, instance_count + len(files), freed + size
    return _done(folders, Purged(series_count, instance_count, freed))


def _done(folders: set[Path], result: Purged) -> Purged:
    for folder in folders:
        with contextlib.suppress(OSError):
            fsync_dir(folder)
    return result
