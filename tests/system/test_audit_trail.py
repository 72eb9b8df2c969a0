"""The audit trail of a real node process: kill -9 never leaves a log that fails `edge-ai audit verify`,
tampering makes it exit 1, and the hospital's repository (rsyslog over TLS) gets the node's messages."""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from atna_peer import SCHEMA, Rsyslog, event_id
from conftest import needs_dcmtk
from peers import echo_ok, make_pki, storescu, wait_for

from edge_ai import phantoms

SMALL = {"audit": {"seal_every": 5, "segment_bytes": 8192, "fsync_interval_ms": 20}}


def _files(tmp_path: Path, seed: int, slices: int = 8) -> list[Path]:
    datasets, _ = phantoms.ct_case(np.random.default_rng(seed), slices=slices, size=64, lesion=slices >= 8)
    folder = tmp_path / f"ct{seed}"
    folder.mkdir()
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(folder / f"{i:03d}.dcm")
        phantoms.write_dataset(ds, paths[-1])
    return paths


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def _verify(node: Any, *extra: str) -> Any:
    out = node.cli("audit", "verify", *extra)
    return out


@needs_dcmtk
@pytest.mark.slow
def test_kill9_at_random_moments_never_leaves_a_log_that_fails_to_verify(node_factory: Any, tmp_path: Path) -> None:
    """Killed mid-traffic (mid-seal, mid-rotation, mid-compression) again and again, the log verifies
    after every kill, fully and fast, and the node carries on sealing after restart."""
    node = node_factory(extra=SMALL)
    rng = random.Random(int(os.environ.get("KILL9_SEED", "15")))  # noqa: S311 (kill moments, not secrets)
    files = _files(tmp_path, 1)
    for cycle in range(6):
        node.start()
        stop = threading.Event()

        def traffic(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                storescu(node.port, files)
                echo_ok(node.port)

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        time.sleep(rng.uniform(0.3, 2.5))
        node.kill9()
        stop.set()
        sender.join(60)
        for extra in ((), ("--fast",)):
            out = _verify(node, *extra)
            assert out.returncode == 0, f"cycle {cycle} {extra}: {out.stdout}{out.stderr}"
    node.start()
    node.stop()
    out = _verify(node)
    assert out.returncode == 0 and "0 lines after the last seal" in out.stdout, out.stdout
    segments = list((node.root / "var" / "audit").glob("audit-*.jsonl*"))
    assert segments, "the traffic was enough to rotate at least once"


def test_truncated_log_makes_verify_exit_1_and_say_where(node_factory: Any) -> None:
    """Cutting the last three lines off a stopped node's log: verify exits 1 and says the log was cut back."""
    node = node_factory()
    node.start()
    node.stop()
    assert _verify(node).returncode == 0
    rows = node.audit_path.read_bytes().splitlines(keepends=True)
    node.audit_path.write_bytes(b"".join(rows[:-3]))
    for extra in ((), ("--fast",)):
        out = _verify(node, *extra)
        assert out.returncode == 1 and "cut back" in out.stdout, out.stdout


def test_check_config_names_a_missing_seal_key(node_factory: Any, tmp_path: Path) -> None:
    """A configured seal key file that is not there: check-config exits 2 naming audit.seal_key_file."""
    node = node_factory(extra={"audit": {"seal_key_file": str(tmp_path / "nope.key")}})
    node.write_config()
    out = node.cli("check-config")
    assert out.returncode == 2 and "audit.seal_key_file" in out.stderr, out.stderr


@needs_dcmtk
def test_node_sends_its_audit_messages_to_the_repository(node_factory: Any, tmp_path: Path) -> None:
    """With audit.atna set, a running node's start, each received instance and its stop reach rsyslog
    over TLS as valid DICOM audit messages, and `edge-ai status` shows nothing left queued."""
    pki = make_pki(tmp_path / "pki")
    arr = Rsyslog(tmp_path / "arr", pki).start()
    try:
        atna = {"host": "127.0.0.1", "port": arr.port, "tls": {"ca_certificates": str(pki["ca"])}}
        node = node_factory(extra={"audit": {"atna": atna}})
        node.start()
        assert storescu(node.port, _files(tmp_path, 2, slices=3)).returncode == 0
        got = wait_for(lambda: [m for m in arr.messages() if event_id(m) == "DICOM Instances Transferred"], 30)
        assert len(got) >= 3
        port = yaml.safe_load(node.config_path.read_text())["metrics"]["port"]
        scrape = wait_for(lambda: _metric(port, "edge_ai_atna_queued_messages") == 0.0, 10)
        assert scrape, _metric(port, "edge_ai_atna_queued_messages")
        assert node.stop() == 0
        msgs = arr.wait(5)
        ids = [event_id(m) for m in msgs]
        assert ids[0] == "Application Activity" and ids[-1] == "Application Activity", ids
        assert all(SCHEMA.validate(m) for m in msgs), SCHEMA.error_log
        status = node.cli("status")
        assert "ATNA 127.0.0.1" in status.stdout and " 0 messages queued" in status.stdout, status.stdout
    finally:
        arr.stop()
