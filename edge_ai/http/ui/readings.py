"""The dashboard's numbers, read from the node's Prometheus registry: the very samples /metrics renders.

A `Reading` is one collection of the registry, flattened to `name{label="value",...}` -> value. The
sampler keeps a bounded history (every 5 s for the last hour, every minute for the last day) so the page
can show what happened over a window the way Prometheus would: the increase of a counter, a histogram's
quantile over its bucket increases. The process's counters start at zero, so a window longer than the
node has run is taken from zero ("since start").
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FINE_S, COARSE_S = 5.0, 60.0
HOUR_S, DAY_S = 3600.0, 86400.0


def key(name: str, labels: Mapping[str, str]) -> str:
    """The series' name as Prometheus text writes it (labels sorted)."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


@dataclass(frozen=True)
class Reading:
    t: float
    values: Mapping[str, float]

    def get(self, name: str, **labels: str) -> float | None:
        return self.values.get(key(name, labels))

    def total(self, name: str, **match: str) -> float:
        """Sum of every series of `name` whose labels include `match` (Prometheus `sum(name{match})`)."""
        return sum(v for k, v in self.values.items() if _matches(k, name, match))

    def by_label(self, name: str, label: str, **match: str) -> dict[str, float]:
        """`sum by (label) (name{match})`."""
        out: dict[str, float] = {}
        for k, v in self.values.items():
            if _matches(k, name, match):
                value = _label(k, label)
                if value is not None:
                    out[value] = out.get(value, 0.0) + v
        return out


def _matches(k: str, name: str, match: Mapping[str, str]) -> bool:
    if k != name and not k.startswith(name + "{"):
        return False
    return all(_label(k, lk) == lv for lk, lv in match.items())


def _label(k: str, label: str) -> str | None:
    marker = f'{label}="'
    start = k.find("{" + marker)
    start = k.find("," + marker) if start < 0 else start
    if start < 0:
        return None
    start += len(marker) + 1
    return k[start:k.index('"', start)]


def read(registry: Any, now: float | None = None) -> Reading:
    """Collect the registry once (custom collectors read live state, as a scrape does)."""
    values: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            values[key(s.name, s.labels)] = float(s.value)
    return Reading(time.time() if now is None else now, values)


ZERO = Reading(0.0, {})


class History:
    """Readings every FINE_S for the last hour and every COARSE_S for the last day (bounded)."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at = time.time() if started_at is None else started_at
        self.fine: deque[Reading] = deque(maxlen=int(HOUR_S / FINE_S) + 24)
        self.coarse: deque[Reading] = deque(maxlen=int(DAY_S / COARSE_S) + 10)
        self._lock = threading.Lock()

    def add(self, r: Reading) -> None:
        with self._lock:
            self.fine.append(r)
            if not self.coarse or r.t - self.coarse[-1].t >= COARSE_S:
                self.coarse.append(r)

    def baseline(self, now: float, window: float) -> tuple[Reading, float]:
        """The reading a window ending `now` starts from, and the window's real length: from zero
        when the node has run for less than `window`."""
        if now - self.started_at <= window:
            return ZERO, now - self.started_at
        with self._lock:
            ring = list(self.fine if window <= HOUR_S else self.coarse)
        older = [r for r in ring if r.t <= now - window]
        start = older[-1] if older else (ring[0] if ring else ZERO)
        return start, now - (start.t or self.started_at)

    def recent(self, since: float, coarse: bool = False) -> list[Reading]:
        with self._lock:
            return [r for r in (self.coarse if coarse else self.fine) if r.t >= since]


def increase(now: Reading, start: Reading, name: str, **match: str) -> float:
    return max(0.0, now.total(name, **match) - start.total(name, **match))


def buckets(r: Reading, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram summed over its other labels, by bound."""
    found = r.by_label(name + "_bucket", "le")
    return sorted((math.inf if le == "+Inf" else float(le), n) for le, n in found.items())


def quantile(q: float, cumulative: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus histogram_quantile: linear within the bucket the rank falls in; None with no samples."""
    rows = list(cumulative)
    if not rows or rows[-1][1] <= 0:
        return None
    rank = q * rows[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in rows:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound, as Prometheus does
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def window_quantile(q: float, now: Reading, start: Reading, name: str) -> float | None:
    """A quantile of the histogram's observations between two readings."""
    before = dict(buckets(start, name))
    return quantile(q, [(b, n - before.get(b, 0.0)) for b, n in buckets(now, name)])
