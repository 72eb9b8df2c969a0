"""DICOMweb STOW-RS into the node, sent by an independent client (dicomweb-client), and the HTTP face's
life with the node: 507 when the disk is full, TLS and mutual TLS, SIGTERM while a request is in flight."""

from __future__ import annotations

import io
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from peers import NodeProcess, make_pki, wait_for
from requests.exceptions import HTTPError

from edge_ai import phantoms


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, str]]:
    n = NodeProcess(tmp_path_factory.mktemp("stow") / "node", extra={"grouping": {"series_timeout_s": 2}})
    n.write_config()
    key = n.api_key("router", "submit,read")
    n.start()
    yield n, key
    n.stop()


def _client(n: NodeProcess, key: str, seen: list[requests.Response] | None = None) -> DICOMwebClient:
    session = requests.Session()
    if seen is not None:
        session.hooks["response"].append(lambda r, *args, **kwargs: seen.append(r))
    return DICOMwebClient(f"{n.http_url}/dicomweb", session=session, headers={"Authorization": f"Bearer {key}"},
                          timeout=120)


def _ct(seed: int, slices: int) -> list[pydicom.Dataset]:
    datasets, _ = phantoms.ct_case(np.random.default_rng(seed), slices=slices, size=128, lesion=slices >= 8)
    return [pydicom.dcmread(io.BytesIO(_part10(ds))) for ds in datasets]


def _part10(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_stow_rs_stores_a_series_and_answers_referenced_sops(node: tuple[NodeProcess, str]) -> None:
    """A DICOMweb router's STOW-RS of a CT series: 200, every instance in Referenced SOP Sequence, one result."""
    n, key = node
    series = _ct(21, 6)
    seen: list[requests.Response] = []
    answer = _client(n, key, seen).store_instances(series)
    assert seen[-1].status_code == 200
    refs = {str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence}
    assert refs == {str(ds.SOPInstanceUID) for ds in series} and "FailedSOPSequence" not in answer
    uid = str(series[0].SeriesInstanceUID)
    with httpx.Client(base_url=n.http_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        def done() -> list[dict[str, Any]]:
            return [j for j in c.get("/v1/jobs", params={"state": "done"}).json()["jobs"]
                    if j["series_instance_uid"] == uid]
        jobs = wait_for(done, 60)
    assert len(jobs) == 1 and jobs[0]["findings"] and jobs[0]["sr_sop_instance_uid"]


def test_stow_rs_some_stored_some_failed_is_202_with_failure_reasons(node: tuple[NodeProcess, str]) -> None:
    """Instances of another study than the path names fail with 0xA900; the others are stored; status 202."""
    n, key = node
    mine, other = _ct(22, 2), _ct(23, 1)
    study = str(mine[0].StudyInstanceUID)
    seen: list[requests.Response] = []
    answer = _client(n, key, seen).store_instances(mine + other, study_instance_uid=study)
    assert seen[-1].status_code == 202 and seen[-1].headers["content-type"] == "application/dicom+json"
    assert {str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence} == {
        str(d.SOPInstanceUID) for d in mine}
    failed = answer.FailedSOPSequence
    assert len(failed) == 1 and failed[0].FailureReason == 0xA900
    assert failed[0].ReferencedSOPInstanceUID == other[0].SOPInstanceUID


def test_stow_rs_nothing_stored_is_409_and_cut_short_parts_are_0xc000(node: tuple[NodeProcess, str]) -> None:
    """A STOW-RS whose every part is bad (cut short, not DICOM) is 409 with Failure Reason 0xC000 each."""
    n, key = node
    good = _part10(_ct(24, 1)[0])
    boundary = "b0undary"
    parts = [good[:-3000], b"\xff\xd8\xff\xe0 a jpeg"]
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                    for p in parts) + f"--{boundary}--\r\n".encode()
    with httpx.Client(base_url=n.http_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        r = c.post("/dicomweb/studies", content=body,
                   headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert r.status_code == 409
        answer = pydicom.Dataset.from_json(r.json())
        assert [i.FailureReason for i in answer.FailedSOPSequence] == [0xC000, 0xC000]
        single = c.post("/dicomweb/studies", content=good, headers={"Content-Type": "application/dicom"})
        assert single.status_code == 415 and single.headers["content-type"] == "application/problem+json"
        json_parts = f'multipart/related; type="application/dicom+json"; boundary={boundary}'
        other = c.post("/dicomweb/studies", content=body, headers={"Content-Type": json_parts})
        assert other.status_code == 415


def test_disk_below_min_free_is_507_and_not_ready(node_factory: Any) -> None:
    """With free space below storage.min_free_bytes a POST gets 507 and readiness says why."""
    n = node_factory(extra={"storage": {"min_free_bytes": 1 << 60}})
    n.write_config()
    key = n.api_key()
    n.start()
    with httpx.Client(base_url=n.http_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        r = c.post("/v1/jobs", content=_part10(_ct(25, 1)[0]), headers={"Content-Type": "application/dicom"})
        assert r.status_code == 507 and "min_free_bytes" in r.json()["detail"]
        ready = c.get("/v1/health/ready")
        assert ready.status_code == 503 and "min_free_bytes" in ready.json()["detail"]
        stow = _client(n, key)
        with pytest.raises(HTTPError) as caught:
            stow.store_instances(_ct(26, 1))
        assert caught.value.response.status_code == 409
        failed = pydicom.Dataset.from_json(caught.value.response.json()).FailedSOPSequence
        assert failed[0].FailureReason == 0xA700


def test_mutual_tls_accepts_the_ca_s_clients_only(node_factory: Any, tmp_path: Path) -> None:
    """With http.tls and require_client_certificate, a client with the CA's certificate gets in; others do not."""
    pki = make_pki(tmp_path / "pki")
    n = node_factory(extra={"http": {"tls": {"enabled": True, "certificate": str(pki["server"]),
                                             "private_key": str(pki["server_key"]),
                                             "ca_certificates": str(pki["ca"]),
                                             "require_client_certificate": True}}})
    n.start()
    url = f"https://127.0.0.1:{n.http_port}/v1/health/live"

    def tls(client: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        if client is not None:
            ctx.load_cert_chain(str(pki[client]), str(pki[f"{client}_key"]))
        return ctx

    assert httpx.get(url, verify=tls("client"), timeout=10).status_code == 200
    for client in (None, "rogue"):
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=tls(client), timeout=10).raise_for_status()
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https", "http"), timeout=10)


@pytest.mark.slow
def test_sigterm_lets_a_request_in_flight_finish(node_factory: Any) -> None:
    """SIGTERM during an upload: the upload still gets its 202 and its job, and the node exits 0."""
    n = node_factory()
    n.write_config()
    key = n.api_key()
    n.start()
    body = _part10(_ct(27, 1)[0])
    result: dict[str, Any] = {}
    started = threading.Event()

    def slow() -> Iterator[bytes]:
        started.set()
        for i in range(0, len(body), 4096):
            time.sleep(0.06 if i < 40000 else 0)
            yield body[i:i + 4096]

    def upload() -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
            result["r"] = c.post(f"{n.http_url}/v1/jobs", content=slow(), headers={"Content-Type": "application/dicom"})

    thread = threading.Thread(target=upload)
    thread.start()
    started.wait(10)
    time.sleep(0.2)
    assert n.proc is not None
    n.proc.send_signal(signal.SIGTERM)
    thread.join(20)
    assert result["r"].status_code == 202, result["r"].text
    assert n.proc.wait(15) == 0, n.log()
    stored = [e for e in n.audit_events() if e["event"] == "instance.stored"]
    assert [e["sop_instance_uid"] for e in stored] == [pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID]
