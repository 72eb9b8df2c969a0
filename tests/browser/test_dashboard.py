"""The dashboard (/ui/) as hospital IT uses it: Chromium against the node as a real process, a DCMTK modality
sending X-rays, a PACS destination that is down until the Retry test brings it up (SPEC "Dashboard")."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import CHROMIUM, needs_chromium, needs_dcmtk
from peers import DCMTK, PEER_ENV, NodeProcess, free_port, make_pki, storescu, wait_for
from prometheus_client.parser import text_string_to_metric_families

from edge_ai import phantoms

pytestmark = [pytest.mark.integration, pytest.mark.browser, needs_chromium, needs_dcmtk]
PATIENT = "Marker^Dashboard^Patient"  # the name in every image sent: it must appear nowhere on the page
# WCAG 2 contrast of every element's own text against the first opaque background behind it
CONTRAST_JS = """() => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number);
  const lin = c => (c /= 255) <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
  const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  const behind = el => { for (; el; el = el.parentElement) { const v = rgb(getComputedStyle(el).backgroundColor);
                                                             if (v.length < 4 || v[3] > 0) return v; }
                         return [255, 255, 255]; };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest("svg") || ![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(behind(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(el.tagName + " " + el.textContent.trim().slice(0, 30) + " " + ratio.toFixed(2));
  }
  return low;
}"""
MOVING = ("edge_ai_spool_free_bytes", "edge_ai_host_memory_available_bytes", "process_resident_memory_bytes",
          "edge_ai_gpu_utilization_ratio", "edge_ai_gpu_memory_used_bytes")


ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def keep_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot under the test's tmp dir, copied to $EDGE_AI_SCREENSHOTS when set."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    folder = os.environ.get("EDGE_AI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / name)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


class Site:
    def __init__(self, root: Path) -> None:
        self.pacs_port = free_port()
        self.node = NodeProcess(root / "node", destinations=[
            {"name": "results", "type": "folder", "path": "var/results"},
            {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": self.pacs_port,
             "timeout_s": 5, "retry": {"attempts": 1, "initial_s": 0.1, "max_s": 0.2}}],
            extra={"node": {"allowed_callers": [{"ae_title": "MODALITY", "sends": "series"}]},
                   "http": {"auth": {"max_failures_per_minute": 1000}}})
        self.node.write_config()
        self.admin = self.node.api_key("it-admin", "read,admin")
        self.viewer = self.node.api_key("it-viewer", "read")
        self.submitter = self.node.api_key("ris", "submit")
        self.root = root
        self.sent = 0

    def send_dx(self) -> None:
        ds, _ = phantoms.dx_case(np.random.default_rng(100 + self.sent), size=256)
        ds.PatientName = PATIENT
        path = self.root / f"dx{self.sent}.dcm"
        ds.save_as(path, enforce_file_format=True)
        self.sent += 1
        out = storescu(self.node.port, [path], calling="MODALITY")
        assert out.returncode == 0, out.stderr

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.node.http_url + "/metrics", timeout=30).text
        return {_key(s.name, s.labels): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def settled(self) -> dict[str, float] | None:
        """/metrics once no job is waiting or running and two reads agree on the counters."""
        first = self.metrics()
        busy = sum(first.get(_key("edge_ai_jobs", {"state": s}), 0) for s in ("received", "ready", "inferring",
                                                                               "reported"))
        second = self.metrics()
        same = all(second.get(k) == v for k, v in first.items() if k.endswith("_total") or "_bucket" in k)
        return second if busy == 0 and same else None


def _key(name: str, labels: dict[str, str]) -> str:
    return name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("dashboard"))
    s.node.start()
    yield s
    s.node.stop()


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    """A fresh browser profile at 1280x800; every request it makes is recorded and must go to the node."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.requests = []
    tab.on("request", lambda r: tab.requests.append(r.url))
    yield tab
    context.close()
    strays = [u for u in tab.requests if not u.startswith(site.node.http_url + "/") and not u.startswith("data:")]
    assert not strays, f"requests that left the node: {strays}"


def sign_in(page: Any, site: Site, key: str) -> None:
    page.goto(site.node.http_url + "/ui/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def events(site: Site, name: str) -> list[dict[str, Any]]:
    return [e for e in site.node.audit_events() if e["event"] == name]


def test_sign_in_refuses_bad_keys_and_admits_a_read_key(page: Any, site: Site) -> None:
    """Without a session only the sign-in form shows; a wrong key or one without `read` is refused; a read key
    opens the dashboard; every attempt is in the audit log."""
    page.goto(site.node.http_url + "/ui/")
    assert page.locator("form").count() == 1 and page.get_by_text("Jobs by state").count() == 0
    sign_in(page, site, "eai_0000dead_" + "x" * 43)
    assert "not accepted" in page.get_by_role("alert").inner_text()
    sign_in(page, site, site.submitter)
    assert "lacks the read scope" in page.get_by_role("alert").inner_text()
    assert page.context.cookies() == []
    sign_in(page, site, site.viewer)
    assert page.get_by_role("heading", name="Jobs by state").is_visible()
    assert "Signed in as it-viewer" in page.locator("header").inner_text()
    signins = events(site, "ui.signin")
    assert [e["outcome"] for e in signins][-3:] == ["failure", "failure", "ok"]
    assert signins[-1]["principal"] == "it-viewer" and signins[-1]["peer"] == "127.0.0.1"
    assert signins[-2]["principal"] == "ris"
    assert not any(site.viewer in line for line in site.node.audit_path.read_text().splitlines())


def test_session_cookie_flags_and_sign_out(page: Any, site: Site) -> None:
    """The session cookie is HttpOnly and SameSite=Strict (not Secure over plain HTTP); signing out ends the
    session on the server, so the old cookie no longer opens the live figures."""
    sign_in(page, site, site.viewer)
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["secure"] is False
    assert cookie["path"] == "/ui" and cookie["expires"] > time.time() + 3600
    assert page.evaluate("document.cookie") == ""  # not readable by script
    old = {cookie["name"]: cookie["value"]}
    assert httpx.get(site.node.http_url + "/ui/live", cookies=old).status_code == 200
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_load_state()
    assert page.get_by_label("API key").is_visible() and page.context.cookies() == []
    assert httpx.get(site.node.http_url + "/ui/live", cookies=old).status_code == 401
    assert events(site, "ui.signout")[-1]["principal"] == "it-viewer"


def _stored(page: Any) -> float:
    return float(page.locator('[data-metric="edge_ai_instances_total{outcome=\\"stored\\"}"]').get_attribute(
        "data-value"))


@pytest.mark.slow
def test_page_updates_itself_when_results_arrive(page: Any, site: Site) -> None:
    """With the page left open, an X-ray sent by a modality shows up as a stored instance and a latest result
    within seconds, without a reload; the patient's name appears nowhere."""
    sign_in(page, site, site.viewer)
    navigations: list[str] = []
    page.on("framenavigated", lambda f: navigations.append(f.url))
    before, results = _stored(page), page.locator("tr.result").count()
    site.send_dx()
    # polled from here: the page's Content-Security-Policy forbids the eval wait_for_function would need
    assert wait_for(lambda: page.locator("tr.result").count() > results, 60, 0.25)
    assert wait_for(lambda: _stored(page) > before, 30, 0.25)
    assert navigations == []
    row = page.locator("tr.result").first.inner_text()
    assert "demo-chest-xr" in row and "1.0.0" in row and "…" in row
    assert PATIENT.split("^")[0] not in page.content()
    assert "Updated" in page.locator("#updated").inner_text()


def _histogram_quantile(q: float, metrics: dict[str, float], name: str) -> float | None:
    """Prometheus histogram_quantile over the series summed across destinations (written for the test)."""
    by_le: dict[float, float] = {}
    for k, v in metrics.items():
        m = re.match(rf'{name}_bucket\{{.*le="([^"]+)"', k)
        if m:
            le = math.inf if m.group(1) == "+Inf" else float(m.group(1))
            by_le[le] = by_le.get(le, 0) + v
    rows = sorted(by_le.items())
    if not rows or rows[-1][1] == 0:
        return None
    rank, lo, lo_n = q * rows[-1][1], 0.0, 0.0
    for le, n in rows:
        if n >= rank:
            return lo if math.isinf(le) else lo + (le - lo) * (rank - lo_n) / (n - lo_n)
        lo, lo_n = le, n
    return lo


@pytest.mark.slow
def test_figures_equal_the_metrics_endpoint(page: Any, site: Site) -> None:
    """Every figure on the page that names a metric shows the value /metrics serves, and the windowed
    figures (instances, time to result p50/p95) are what Prometheus would compute from the same series."""
    if site.sent == 0:
        site.send_dx()
    metrics = wait_for(site.settled, 60, 0.5)
    assert metrics, "the node did not settle"
    assert metrics[_key("edge_ai_instances_total", {"outcome": "stored"})] >= 1
    sign_in(page, site, site.viewer)
    shown = page.eval_on_selector_all("[data-metric]", "els => els.map(e => [e.dataset.metric, e.dataset.value])")
    assert len(shown) >= 12
    for metric, value in shown:
        if value is None:
            assert metric not in metrics, metric
            continue
        expected = metrics[metric]
        # gauges that move between two reads: 5 % (GPU busy, a ratio that can jump from 0: 0.1 more)
        tolerance = 0.05 * abs(expected) + (0.1 if "ratio" in metric else 0) if metric.startswith(MOVING) else 0
        assert abs(float(value) - expected) <= tolerance, (metric, value, expected)
    derived = dict(page.eval_on_selector_all("[data-derived]", "els => els.map(e => [e.dataset.derived, "
                                                                "e.dataset.value ?? e.textContent])"))
    assert float(derived["instances_hour"]) == metrics[_key("edge_ai_instances_total", {"outcome": "stored"})]
    assert "since start" in page.locator("#h-throughput ~ table thead").inner_text()
    for q in (50, 95):
        expected = _histogram_quantile(q / 100, metrics, "edge_ai_time_to_result_seconds")
        assert expected is not None
        assert float(derived[f"ttr_p{q}_hour"]) == pytest.approx(expected, rel=1e-6)
    errors = sum(v for k, v in metrics.items() if k.startswith("edge_ai_errors_total"))
    assert float(derived["errors_total"]) == errors


@pytest.mark.slow
def test_retry_on_a_failed_job_requeues_it(page: Any, site: Site, tmp_path: Path) -> None:
    """A job dead-lettered because PACS was down shows with its reason; once PACS is up, an admin's Retry puts it
    back in the queue, it is delivered, and the retry is audited with who and which job. A read-only user gets
    no Retry button."""
    site.send_dx()
    sign_in(page, site, site.viewer)
    page.wait_for_selector("tr.failed-job", timeout=60_000)
    assert page.get_by_role("button", name=re.compile("Retry job")).count() == 0
    assert "dead letter: pacs" in page.locator("tr.failed-job .reason").first.inner_text()
    pacs_row = 'tr.destination[data-destination="pacs"]'
    assert "not reachable" in page.locator(pacs_row).inner_text()
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, site, site.admin)
    job = page.locator("tr.failed-job").first.get_attribute("data-job")
    (tmp_path / "pacs").mkdir()
    pacs = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "PACS", "-od", str(tmp_path / "pacs"),
                             str(site.pacs_port)], env=PEER_ENV)
    try:
        time.sleep(0.5)
        page.get_by_role("button", name=f"Retry job {job}").click()
        page.wait_for_load_state()
        assert f"Job {job} is back in the queue" in page.get_by_role("status").first.inner_text()
        assert wait_for(lambda: page.locator(f'tr.failed-job[data-job="{job}"]').count() == 0, 60, 0.25)
        assert wait_for(lambda: list((tmp_path / "pacs").glob("*")), 30)
        assert wait_for(lambda: page.locator(pacs_row + " .state.ok").count() == 1, 30, 0.25)
    finally:
        pacs.terminate()
        pacs.wait(10)
    retry = events(site, "ui.retry")[-1]
    assert retry["principal"] == "it-admin" and retry["job"] == job and retry["outcome"] == "queued"
    states = [e["state"] for e in events(site, "job.state") if str(e["job"]) == job]
    assert states[-3:] == ["inferring", "reported", "delivered"] and "ready" in states


def test_retry_without_the_page_s_csrf_token_is_refused(site: Site) -> None:
    """A forged Retry (right session cookie, no CSRF token, or a foreign Origin) changes nothing and is audited."""
    with httpx.Client(base_url=site.node.http_url) as c:
        c.post("/ui/signin", data={"api_key": site.admin})
        r = c.post("/ui/jobs/1/retry", data={})
        assert r.status_code == 403
        r = c.post("/ui/jobs/1/retry", data={"csrf": "x"}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
    assert events(site, "ui.retry")[-1]["outcome"] == "refused"


def test_layout_at_desktop_and_narrow_widths_with_labelled_controls(page: Any, site: Site, tmp_path: Path) -> None:
    """At 1280x800 and on a phone-width window the page fits without sideways scrolling, every control has a
    label, all text has at least 4.5:1 contrast, and a screenshot is kept."""
    sign_in(page, site, site.admin)
    page.wait_for_timeout(500)
    for width, height, name in ((1280, 800, "dashboard-1280x800.png"), (390, 844, "dashboard-narrow.png")):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1, name
        assert keep_screenshot(page, tmp_path, name).stat().st_size > 10_000
    unlabelled = page.eval_on_selector_all(
        "input:not([type=hidden]), button, select, textarea",
        "els => els.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
        " && !e.textContent.trim()).map(e => e.outerHTML)")
    assert unlabelled == []
    assert page.evaluate(CONTRAST_JS) == []
    headers = httpx.get(site.node.http_url + "/ui/").headers
    assert "default-src 'none'" in headers["content-security-policy"]


@pytest.mark.slow
def test_session_cookie_is_secure_under_tls(browser: Any, tmp_path: Path) -> None:
    """Served over TLS (http.tls), the session cookie is also Secure, and the page loads everything over it."""
    pki = make_pki(tmp_path / "pki")
    node = NodeProcess(tmp_path / "node", extra={"http": {"tls": {
        "enabled": True, "certificate": str(pki["server"]), "private_key": str(pki["server_key"])}}})
    node.write_config()
    key = node.api_key("it-viewer", "read")
    node.start()
    context = browser.new_context(ignore_https_errors=True)  # the test CA is not in Chromium's store
    try:
        tab = context.new_page()
        seen: list[str] = []
        tab.on("request", lambda r: seen.append(r.url))
        origin = f"https://127.0.0.1:{node.http_port}"
        tab.goto(origin + "/ui/")
        tab.get_by_label("API key").fill(key)
        tab.get_by_role("button", name="Sign in").click()
        tab.wait_for_load_state()
        assert tab.get_by_role("heading", name="Jobs by state").is_visible()
        (cookie,) = context.cookies()
        assert cookie["secure"] is True and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert seen and all(u.startswith(origin + "/") for u in seen), seen
    finally:
        context.close()
        node.stop()
