"""Host CPU and memory as Prometheus metrics (Linux /proc), so the dashboard and /metrics read one source.

CPU is a counter of seconds by mode (busy, idle), as node_exporter exports it: a rate over any window
gives the busy fraction. Memory is read at scrape time. Where /proc is missing, the families are empty.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_IDLE = {3, 4}  # idle, iowait: fields of the `cpu` line of /proc/stat after its name


def cpu_seconds(stat: Path = Path("/proc/stat")) -> tuple[float, float] | None:
    """(busy, idle) CPU seconds of all cores since boot, or None where /proc/stat is not readable."""
    try:
        first = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    hz = os.sysconf("SC_CLK_TCK") or 100
    idle = sum(v for i, v in enumerate(ticks) if i in _IDLE)
    return (sum(ticks) - idle) / hz, idle / hz


def memory(meminfo: Path = Path("/proc/meminfo")) -> tuple[float, float] | None:
    """(total, available) bytes, or None where /proc/meminfo is not readable."""
    fields: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in meminfo.read_text().splitlines():
            name, _, rest = line.partition(":")
            fields[name] = float(rest.split()[0]) * 1024
    if "MemTotal" not in fields or "MemAvailable" not in fields:
        return None
    return fields["MemTotal"], fields["MemAvailable"]


class HostCollector(Collector):
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("edge_ai_host_cpu_seconds", "CPU seconds of all cores since boot, by mode",
                                  labels=["mode"])
        seconds = cpu_seconds()
        if seconds is not None:
            cpu.add_metric(["busy"], seconds[0])
            cpu.add_metric(["idle"], seconds[1])
        yield cpu
        cores = GaugeMetricFamily("edge_ai_host_cpus", "CPU cores of the host")
        cores.add_metric([], float(os.cpu_count() or 1))
        yield cores
        mem = memory()
        total = GaugeMetricFamily("edge_ai_host_memory_total_bytes", "Memory installed")
        available = GaugeMetricFamily("edge_ai_host_memory_available_bytes", "Memory available to new work")
        if mem is not None:
            total.add_metric([], mem[0])
            available.add_metric([], mem[1])
        yield total
        yield available
