"""The dashboard's numbers, read from the node's Prometheus registry: the very samples /metrics renders.

A `Reading` is one collection of the registry, flattened to `name{label="value",...}` -> value. The
sampler keeps a bounded history (every 5 s for the last hour, every minute for the last day) so the page
can show what happened over a window the way Prometheus would: the increase of a counter, a histogram's
quantile over its bucket increases. The process's counters start at zero, so a window longer than the
node has run is taken from zero ("since start").

The history holds up to 2,200 readings of a few hundred series each: every reading it keeps is packed
(`Packed`), one float per series over a key table the readings share, ~9 bytes a series instead of a dict
entry, a key string and a float object (~190 bytes), which made the full history ~125 MB (RSS grew
~26 MB/hour through a day's soak until it filled) and makes it ~8 MB.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

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


class Keys:
    """The series keys the history has seen, each stored once for all its readings (grows with the
    registry's series, not with time)."""

    def __init__(self) -> None:
        self.position: dict[str, int] = {}
        self.names: list[str] = []

    def positions(self, keys: Iterable[str]) -> list[int]:
        out = []
        for k in keys:
            at = self.position.get(k)
            if at is None:
                at = self.position[k] = len(self.names)
                self.names.append(k)
            out.append(at)
        return out


class Packed(Mapping[str, float]):
    """A reading's values as arrays over shared `Keys`: a float64 and a presence flag per series."""

    __slots__ = ("_keys", "_present", "_values")

    def __init__(self, keys: Keys, values: Mapping[str, float]) -> None:
        at = keys.positions(values)
        self._keys = keys
        self._values = np.zeros(len(keys.names), dtype=np.float64)
        self._present = np.zeros(len(keys.names), dtype=bool)
        self._values[at] = list(values.values())
        self._present[at] = True

    def __getitem__(self, k: str) -> float:
        at = self._keys.position.get(k)
        if at is None or at >= len(self._present) or not self._present[at]:
            raise KeyError(k)
        return float(self._values[at])

    def __iter__(self) -> Iterator[str]:
        names = self._keys.names
        return (names[i] for i in np.flatnonzero(self._present))

    def __len__(self) -> int:
        return int(self._present.sum())


class History:
    """Readings every FINE_S for the last hour and every COARSE_S for the last day (bounded), packed."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at = time.time() if started_at is None else started_at
        self.fine: deque[Reading] = deque(maxlen=int(HOUR_S / FINE_S) + 24)
        self.coarse: deque[Reading] = deque(maxlen=int(DAY_S / COARSE_S) + 10)
        self.keys = Keys()
        self._lock = threading.Lock()

    def add(self, r: Reading) -> None:
        with self._lock:
            r = Reading(r.t, Packed(self.keys, r.values))
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
