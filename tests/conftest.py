"""Shared fixtures: real peers on loopback (see peers.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import DCIODVFY, DCMTK, ORTHANC, NodeProcess, Orthanc

# Outside CI a missing peer skips; in CI (CI=true) it fails, so a missing install step shows.
_CI = bool(os.environ.get("CI"))
needs_dcmtk = pytest.mark.skipif(not (DCMTK / "storescu").exists() and not _CI, reason="DCMTK not installed")
needs_orthanc = pytest.mark.skipif(shutil.which(ORTHANC) is None and not _CI, reason="Orthanc not installed")
needs_dciodvfy = pytest.mark.skipif(not Path(DCIODVFY).exists() and not _CI, reason="dicom3tools not installed")
CHROMIUM = "/usr/bin/chromium"  # Debian's; `playwright install` cannot download browsers here
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists() and not _CI, reason="chromium not installed")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc").start()
    yield pacs
    pacs.stop()


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[object]:
    started: list[NodeProcess] = []

    def make(**kwargs: object) -> NodeProcess:
        node = NodeProcess(tmp_path / f"node{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()
