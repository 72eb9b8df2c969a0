"""Makes docs/dashboard.png: a node with a PACS (DCMTK storescp) and one that is down, a few minutes of
demo X-rays from a DCMTK modality, a reader's feedback, then the dashboard in Chromium at 1280 px wide.

    .venv/bin/python scripts/dashboard_screenshot.py [--minutes 3] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from peers import DCMTK, PEER_ENV, NodeProcess, free_port, storescu  # noqa: E402

from edge_ai import phantoms  # noqa: E402

ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pacs_port, down_port = free_port(), free_port()
        (root / "pacs").mkdir()
        pacs = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "PACS", "-od", str(root / "pacs"),
                                 str(pacs_port)], env=PEER_ENV)
        node = NodeProcess(root / "node", destinations=[
            {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port},
            {"name": "archive", "type": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": down_port,
             "timeout_s": 2, "retry": {"attempts": 1, "initial_s": 0.1, "max_s": 0.2}}],
            extra={"node": {"allowed_callers": [{"ae_title": "MODALITY", "sends": "series"}]},
                   "drift": {"window": 5}})
        node.write_config()
        key = node.api_key("it-admin", "read,admin,feedback")
        node.start()
        try:
            archive = _traffic(node, root, key, args.minutes, down_port)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(node.http_url + "/ui/")
                page.get_by_label("API key").fill(key)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_load_state()
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
            archive.terminate()
        finally:
            node.stop()
            pacs.terminate()
    print(args.out)


def _traffic(node: NodeProcess, root: Path, key: str, minutes: float, archive_port: int) -> subprocess.Popen[bytes]:
    """Sends an X-ray every 8 s; the archive comes up after the second, so the first ones dead-letter."""
    deadline, i = time.monotonic() + minutes * 60, 0
    (root / "archive").mkdir()
    archive = None
    while time.monotonic() < deadline:
        if i == 2:
            archive = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "ARCHIVE", "-od", str(root / "archive"),
                                        str(archive_port)], env=PEER_ENV)
        ds, _ = phantoms.dx_case(np.random.default_rng(i), size=256)
        path = root / f"dx{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        storescu(node.port, [path], calling="MODALITY")
        i += 1
        time.sleep(8)
    with httpx.Client(base_url=node.http_url, headers={"Authorization": f"Bearer {key}"}) as c:
        for job in c.get("/v1/jobs", params={"limit": 10}).json()["jobs"]:
            c.post(f"/v1/jobs/{job['job_id']}/feedback", json={"agree": int(job["job_id"]) % 4 != 0})
    time.sleep(6)
    assert archive is not None
    return archive


if __name__ == "__main__":
    main()
