"""The HTTP API of the node as a real process: jobs, predictions, bad input, auth, audit (SPEC "HTTP API")."""

from __future__ import annotations

import http.client
import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pydicom
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from peers import NodeProcess, wait_for

from edge_ai import phantoms
from edge_ai.report.sr import sr_summary

ISSUER, AUDIENCE = "https://idp.hospital.test", "edge-ai"
LIMIT = 32 * 1024 * 1024


class Keys:
    """The identity provider's signing keys (in the JWKS the node trusts) and a stranger's."""

    def __init__(self, folder: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwks = {"keys": [{**json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key())), "kid": "rsa1", "use": "sig"},
                         {**json.loads(ECAlgorithm.to_jwk(self.ec.public_key())), "kid": "ec1", "use": "sig"}]}
        self.path = folder / "jwks.json"
        folder.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(jwks))

    def token(self, *, key: Any = None, alg: str = "RS256", kid: str = "rsa1", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "orchestrator-7", "iat": now, "nbf": now - 5,
                "exp": now + 300, "scope": "submit read", **claims}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key or self.rsa, algorithm=alg,
                          headers={"kid": kid})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, Keys, str]]:
    root = tmp_path_factory.mktemp("http")
    keys = Keys(root / "idp")
    node = NodeProcess(root / "node", extra={
        "grouping": {"series_timeout_s": 2},
        "http": {"max_request_bytes": LIMIT,
                 "auth": {"jwt": {"jwks_file": str(keys.path), "issuer": ISSUER, "audience": AUDIENCE},
                          "max_failures_per_minute": 10000}},
    })
    node.write_config()
    api_key = node.api_key("ci-runner", "submit,read,admin")
    node.start()
    yield node, keys, api_key
    node.stop()


@pytest.fixture
def client(setup: tuple[NodeProcess, Keys, str]) -> Iterator[httpx.Client]:
    node, _, key = setup
    with httpx.Client(base_url=node.http_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def dx_bytes(seed: int, lesion: bool = True) -> bytes:
    ds, _ = phantoms.dx_case(np.random.default_rng(seed), lesion=lesion)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct_parts(seed: int, slices: int = 4) -> list[bytes]:
    datasets, _ = phantoms.ct_case(np.random.default_rng(seed), slices=slices, size=128, lesion=slices >= 8)
    out = []
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def multipart(parts: list[bytes], boundary: str = "edge-ai-test-boundary") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def dicom(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/dicom"}


# ---- jobs and predictions --------------------------------------------------------------------------------
def test_predict_with_wait_answers_the_finding_and_the_sr_agrees(client: httpx.Client) -> None:
    """A script posting one X-ray with Prefer: wait gets the finding back as JSON, and the SR says the same."""
    r = client.post("/v1/predict/demo-chest-xr", content=dx_bytes(1), headers={**dicom(b""), "Prefer": "wait=25"})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["state"] == "done" and r.headers["preference-applied"] == "wait=25"
    assert job["model"]["name"] == "demo-chest-xr" and len(job["model"]["sha256"]) == 64
    finding = job["findings"][0]
    assert finding["code"]["value"] == "427359005" and finding["present"] is True
    sr = client.get(f"/v1/jobs/{job['job_id']}/sr")
    assert sr.status_code == 200 and sr.headers["content-type"] == "application/dicom"
    summary = sr_summary(pydicom.dcmread(io.BytesIO(sr.content)))
    assert summary["sop_instance_uid"] == job["sr_sop_instance_uid"]
    assert summary["positive"] is finding["present"] and summary["probability"] == finding["confidence_score"]
    rois = finding["regions_of_interest"]
    assert len(summary["findings"]) == len(rois) >= 1
    for roi, read in zip(rois, summary["findings"], strict=True):
        x0, y0, x1, y1 = roi["box"]
        assert read["sop_instance_uid"] == roi["sop_instance_uid"]
        assert read["centre"] == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2), abs=0.01)
        assert read["probability"] == roi["confidence_score"]


def test_jobs_multipart_answers_202_with_location_and_lists_newest_first(client: httpx.Client) -> None:
    """A RIS posting a CT series gets 202, one job for the series, and finds it in the job list."""
    body, ctype = multipart(ct_parts(2))
    r = client.post("/v1/jobs", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 202, r.text
    jobs = r.json()["jobs"]
    assert len(jobs) == 1 and r.headers["location"] == jobs[0]["href"] == f"/v1/jobs/{jobs[0]['job_id']}"
    done = wait_for(lambda: client.get(jobs[0]["href"]).json()["state"] == "done", 60)
    assert done
    listed = client.get("/v1/jobs", params={"state": "done", "limit": 50}).json()["jobs"]
    ids = [int(j["job_id"]) for j in listed]
    assert int(jobs[0]["job_id"]) in ids and ids == sorted(ids, reverse=True)
    assert client.get("/v1/jobs", params={"state": "nonsense"}).status_code == 400


def test_sr_is_404_until_there_is_one_and_unknown_job_is_404(client: httpx.Client) -> None:
    """Asking for a job that does not exist, or its SR, is a 404 problem, not a crash."""
    r = client.get("/v1/jobs/999999")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/jobs/999999/sr").status_code == 404
    assert client.get("/v1/jobs/abc").status_code == 404


def test_idempotency_key_replays_the_same_jobs_and_refuses_another_body(
        client: httpx.Client, setup: tuple[NodeProcess, Keys, str]) -> None:
    """A client that retries a POST with its Idempotency-Key gets the same jobs; a different body is refused."""
    key = str(uuid.uuid4())
    body = dx_bytes(3)
    first = client.post("/v1/jobs", content=body, headers={**dicom(body), "Idempotency-Key": key})
    again = client.post("/v1/jobs", content=body, headers={**dicom(body), "Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["jobs"][0]["job_id"] == again.json()["jobs"][0]["job_id"]
    other = dx_bytes(4)
    r = client.post("/v1/jobs", content=other, headers={**dicom(other), "Idempotency-Key": key})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    uid = pydicom.dcmread(io.BytesIO(other)).SOPInstanceUID
    stored = [e for e in setup[0].audit_events() if e["event"] == "instance.stored"]
    assert not [e for e in stored if e.get("sop_instance_uid") == uid]


def test_unknown_model_is_404(client: httpx.Client) -> None:
    """Predicting with a model the node does not serve says so before storing anything."""
    r = client.post("/v1/predict/no-such-model", content=dx_bytes(5), headers=dicom(b""))
    assert r.status_code == 404 and "no-such-model" in r.json()["detail"]


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,ctype,status,words", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(400), "application/dicom", 400, "JPEG"),
    (b"patient: Doe, John\n" * 30, "application/dicom", 400, "text"),
    (b"", "application/dicom", 400, "empty"),
    (b"hello", "text/plain", 415, "content type"),
])
def test_bad_bodies_get_a_problem_naming_what_is_wrong(
        client: httpx.Client, body: bytes, ctype: str, status: int, words: str) -> None:
    """A JPEG, text, an empty body or a wrong content type gets 400/415 with a detail saying which."""
    r = client.post("/v1/jobs", content=body, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert problem["status"] == status and words in problem["detail"] and problem["type"] and problem["title"]


def test_cut_short_dicom_is_400_and_not_kept(client: httpx.Client, setup: tuple[NodeProcess, Keys, str]) -> None:
    """A DICOM body cut short in its pixel data is refused (400 naming it) and nothing of it is kept."""
    body = dx_bytes(6)
    r = client.post("/v1/jobs", content=body[:-5000], headers=dicom(body))
    assert r.status_code == 400 and "cut short" in r.json()["detail"]
    uid = pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID
    events = setup[0].audit_events()
    assert not [e for e in events if e["event"] == "instance.stored" and e.get("sop_instance_uid") == uid]
    assert [e for e in events if e["event"] == "instance.rejected" and e.get("sop_instance_uid") == uid]


def test_over_the_limit_by_content_length_is_413_before_reading(setup: tuple[NodeProcess, Keys, str]) -> None:
    """A body declared larger than http.max_request_bytes is refused at once, without sending it."""
    node, _, key = setup
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    conn.putrequest("POST", "/v1/jobs")
    conn.putheader("Authorization", f"Bearer {key}")
    conn.putheader("Content-Type", "application/dicom")
    conn.putheader("Content-Length", str(LIMIT + 1))
    conn.endheaders()
    conn.send(b"\0" * 1024)  # a little of it; the answer must not wait for the rest
    rsp = conn.getresponse()
    assert rsp.status == 413 and rsp.getheader("content-type") == "application/problem+json"
    conn.close()


def test_chunked_body_over_the_limit_is_413_and_nothing_kept(
        client: httpx.Client, setup: tuple[NodeProcess, Keys, str]) -> None:
    """A chunked upload that passes the limit is cut off with 413 and leaves no file in the spool."""
    body = dx_bytes(7)
    spool = setup[0].root / "var" / "spool"
    received = (spool / "instances", spool / "tmp")  # what a request leaves (reports of earlier tests may land)
    before = {p for d in received for p in d.rglob("*") if p.is_file()}

    def chunks() -> Iterator[bytes]:
        yield body[:-1000]  # a valid start, then far too much pixel data
        for _ in range(LIMIT // (1 << 20) + 2):
            yield b"\0" * (1 << 20)

    r = client.post("/v1/jobs", content=chunks(), headers=dicom(body))
    assert r.status_code == 413 and "max_request_bytes" in r.json()["detail"]
    after = {p for d in received for p in d.rglob("*") if p.is_file()}
    assert after - before == set()


# ---- auth ------------------------------------------------------------------------------------------------
def test_a_multipart_upload_passing_the_limit_keeps_none_of_its_complete_parts(
        client: httpx.Client, setup: tuple[NodeProcess, Keys, str]) -> None:
    """A STOW-style upload whose first instance is complete but whose body then passes the limit is 413 and
    keeps nothing: no file, no index row, no job (an HTTP request is acknowledged whole or not at all)."""
    import sqlite3

    node = setup[0]
    first = dx_bytes(11)
    uid = str(pydicom.dcmread(io.BytesIO(first), stop_before_pixels=True).SOPInstanceUID)
    body, ctype = multipart([first, dx_bytes(12)])
    split = body.index(first) + len(first) + 200  # past the first part, inside the second
    spool = node.root / "var" / "spool"
    received = (spool / "instances", spool / "tmp")
    before = {p for d in received for p in d.rglob("*") if p.is_file()}

    def chunks() -> Iterator[bytes]:
        yield body[:split]
        for _ in range(LIMIT // (1 << 20) + 2):
            yield b"\0" * (1 << 20)

    r = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": ctype})
    assert r.status_code == 413
    time.sleep(0.5)
    assert {p for d in received for p in d.rglob("*") if p.is_file()} - before == set()
    with sqlite3.connect(spool / "queue.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM instances WHERE sop_instance_uid=?", (uid,)).fetchone()[0] == 0


def test_no_or_bad_credentials_are_401_with_www_authenticate(setup: tuple[NodeProcess, Keys, str]) -> None:
    """Without credentials, or with a wrong key, the API answers 401 and says to use a Bearer token."""
    node, _, key = setup
    with httpx.Client(base_url=node.http_url, timeout=30) as c:
        for headers in ({}, {"Authorization": "Bearer eai_00000000_" + "x" * 43},
                        {"Authorization": f"Basic {key}"}, {"Authorization": key[:-2] + "zz"}):
            r = c.get("/v1/jobs", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/v1/health/live").status_code == 200
        assert c.get("/v1/openapi.json").status_code == 200


def test_a_read_only_key_cannot_submit_and_a_revoked_key_stops_working(setup: tuple[NodeProcess, Keys, str]) -> None:
    """A key without `submit` gets 403 on POST; once revoked with the CLI it gets 401 at once."""
    node = setup[0]
    key = node.api_key("dashboard", "read")
    with httpx.Client(base_url=node.http_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.get("/v1/jobs").status_code == 200
        r = c.post("/v1/jobs", content=b"x", headers={"Content-Type": "application/dicom"})
        assert r.status_code == 403 and "submit" in r.json()["detail"]
        assert node.cli("apikey", "revoke", "dashboard").returncode == 0
        assert c.get("/v1/jobs").status_code == 401
    listed = node.cli("apikey", "list").stdout
    assert "ci-runner" in listed and "dashboard" not in listed and key not in listed
    assert node.cli("apikey", "revoke", "nobody").returncode == 1


@pytest.mark.parametrize("case,status", [
    ("good", 200), ("good_ec", 200), ("expired", 401), ("not_yet", 401), ("wrong_audience", 401),
    ("wrong_issuer", 401), ("foreign_key", 401), ("alg_none", 401), ("hs256_with_public_key", 401),
    ("missing_scope", 403), ("scp_list", 200),
])
def test_oauth_access_tokens(setup: tuple[NodeProcess, Keys, str], case: str, status: int) -> None:
    """JWT access tokens are checked offline: signature by a JWKS key, exp, nbf, iss, aud, algorithm, scope."""
    node, keys, _ = setup
    now = int(time.time())
    token = {
        "good": lambda: keys.token(),
        "good_ec": lambda: keys.token(key=keys.ec, alg="ES256", kid="ec1"),
        "expired": lambda: keys.token(exp=now - 600, iat=now - 900),
        "not_yet": lambda: keys.token(nbf=now + 600),
        "wrong_audience": lambda: keys.token(aud="someone-else"),
        "wrong_issuer": lambda: keys.token(iss="https://evil.test"),
        "foreign_key": lambda: keys.token(key=keys.foreign),
        "alg_none": lambda: jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "scope": "read"}, None,
                                       algorithm="none", headers={"kid": "rsa1"}),
        "hs256_with_public_key": lambda: _hs256_with_public_key(keys, now),
        "missing_scope": lambda: keys.token(scope="submit"),
        "scp_list": lambda: keys.token(scope=None, scp=["read"]),
    }[case]()
    with httpx.Client(base_url=node.http_url, timeout=30) as c:
        r = c.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}, params={"limit": 1})
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


def _hs256_with_public_key(keys: Keys, now: int) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the server's public JWK."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
    body = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "scope": "read"}).encode())
    secret = RSAAlgorithm.to_jwk(keys.rsa.public_key()).encode()
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_repeated_failures_from_one_peer_are_throttled_and_audited(node_factory: Any) -> None:
    """After a handful of bad attempts an address must wait (429 with Retry-After); each failure is audited."""
    node = node_factory(extra={"http": {"auth": {"max_failures_per_minute": 4}}})
    node.write_config()
    key = node.api_key()
    node.start()
    with httpx.Client(base_url=node.http_url, timeout=30) as c:
        statuses = [c.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code for _ in range(6)]
        assert statuses == [401] * 4 + [429] * 2
        r = c.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})  # even a good key waits its turn
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 61
    failed = [e for e in node.audit_events() if e["event"] == "auth.failed"]
    assert len(failed) == 4 and all(e["peer"] == "127.0.0.1" and "wrong" not in json.dumps(e) for e in failed)


# ---- audit, logs, documents ------------------------------------------------------------------------------
def test_every_request_is_audited_and_no_credential_is_ever_logged(setup: tuple[NodeProcess, Keys, str]) -> None:
    """The audit has one http.request per request with who, what and the instance hashes; no key or token
    appears in the audit or the application log."""
    node, keys, api_key = setup
    token = keys.token()
    body = dx_bytes(8)
    with httpx.Client(base_url=node.http_url, timeout=60) as c:
        r = c.post("/v1/jobs", content=body, headers={"Authorization": f"Bearer {api_key}", **dicom(body)})
        assert r.status_code == 202
        c.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        c.get("/v1/jobs", headers={"Authorization": f"Bearer {token}x"})
    time.sleep(0.3)
    events = [e for e in node.audit_events() if e["event"] == "http.request"]
    post = next(e for e in reversed(events) if e["method"] == "POST" and e.get("job_ids") == [r.json()["jobs"][0]
                                                                                              ["job_id"]])
    import hashlib

    from edge_ai.spool.ingest import dataset_offset
    assert post["principal"] == "ci-runner" and post["peer"] == "127.0.0.1" and post["status"] == 202
    assert post["path"] == "/v1/jobs" and post["request_bytes"] == len(body)
    assert post["instances"][0]["sha256"] == hashlib.sha256(body[dataset_offset(body):]).hexdigest()
    assert any(e.get("principal") == "orchestrator-7" and e.get("auth") == "jwt" for e in events)
    text = node.audit_path.read_text() + node.log()
    for secret in (api_key, token, api_key.split("_", 2)[2], token.split(".")[2]):
        assert secret not in text


def test_openapi_document_without_cdn_docs_and_metrics_on_the_http_port(client: httpx.Client) -> None:
    """The OpenAPI document is served; no /docs page that would fetch scripts from a CDN; /metrics works."""
    doc = client.get("/v1/openapi.json").json()
    assert {"/v1/jobs", "/v1/predict/{model}", "/dicomweb/studies"} <= set(doc["paths"])
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "edge_ai_instances_total" in metrics.text
    assert client.get("/v1/health/ready").json()["status"] == "ready"


def test_a_failed_job_can_be_retried_by_an_admin(client: httpx.Client, setup: tuple[NodeProcess, Keys, str]) -> None:
    """A job that failed (undecodable pixel data) goes back to the queue on retry; a done job cannot be retried."""
    ds, _ = phantoms.dx_case(np.random.default_rng(9), lesion=True)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # JPEG baseline, but the bytes are not JPEG
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not really a jpeg \xff\xd9"])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = client.post("/v1/predict/demo-chest-xr", content=buf.getvalue(), headers={**dicom(b""), "Prefer": "wait=20"})
    assert r.status_code == 200 and r.json()["state"] == "failed" and r.json()["error"]["detail"]
    job = r.json()["job_id"]
    retried = client.post(f"/v1/jobs/{job}/retry")
    assert retried.status_code == 202 and retried.json()["state"] == "queued"
    assert wait_for(lambda: any(e["event"] == "job.state" and e.get("reason") == "retry requested"
                                for e in setup[0].audit_events()), 10)
    done = client.post("/v1/predict/demo-chest-xr", content=dx_bytes(10), headers={**dicom(b""), "Prefer": "wait=20"})
    assert client.post(f"/v1/jobs/{done.json()['job_id']}/retry").status_code == 409


def test_a_reader_s_feedback_is_recorded_for_a_done_job(client: httpx.Client,
                                                        setup: tuple[NodeProcess, Keys, str]) -> None:
    """A reader posts agree/disagree on a finished job (feedback scope): 201 and audited; unknown job 404."""
    node = setup[0]
    key = node.api_key("reader", "read,feedback")
    done = client.post("/v1/predict/demo-chest-xr", content=dx_bytes(11), headers={**dicom(b""), "Prefer": "wait=20"})
    job = done.json()["job_id"]
    with httpx.Client(base_url=node.http_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as reader:
        r = reader.post(f"/v1/jobs/{job}/feedback", json={"agree": False, "comment": "nodule is a nipple shadow"})
        assert r.status_code == 201, r.text
        assert reader.post("/v1/jobs/999999/feedback", json={"agree": True}).status_code == 404
        assert reader.post(f"/v1/jobs/{job}/feedback", json={"comment": "no verdict"}).status_code == 400
    assert client.post(f"/v1/jobs/{job}/feedback", json={"agree": True}).status_code == 403  # no feedback scope
    assert wait_for(lambda: [e for e in node.audit_events() if e["event"].startswith("feedback")
                             and str(e.get("job")) == job], 10)
