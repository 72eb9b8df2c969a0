"""IHE ATNA against a real Audit Record Repository (rsyslog, TLS on loopback): what the hospital's
security officer sees arrive, and that nothing is lost while the repository is away."""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from atna_peer import RSYSLOGD, SCHEMA, Rsyslog, event_id, event_types
from peers import make_pki, wait_for

from edge_ai.config import Atna, AtnaTLS
from edge_ai.observability.atna import Context
from edge_ai.observability.atna_sender import AtnaSender
from edge_ai.observability.audit import AuditLog
from edge_ai.observability.audit_seals import SealStore

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(RSYSLOGD).exists() and not shutil.which("rsyslogd"), reason="rsyslog not installed"),
]
KEY = b"s" * 32
STUDY = "1.2.826.0.1.3680043.10.1.1"


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = error = _add

    def exception(self, event: str, **kw: Any) -> None:
        raise AssertionError(f"{event} {kw}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def repository(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Rsyslog]:
    arr = Rsyslog(tmp_path / "arr", pki).start()
    yield arr
    arr.stop()


class Trail:
    """The node's audit log and ATNA sender, as AuditTrail wires them, without the rest of the node."""

    def __init__(self, root: Path, cfg: Atna) -> None:
        self.path = root / "audit" / "audit.jsonl"
        self.store = SealStore(root / "audit" / "seals.sqlite3")
        self.sender: AtnaSender | None = None
        self.log = AuditLog(self.path, key=KEY, seals=self.store,
                            on_append=lambda: self.sender and self.sender.wake())
        self.lag: list[tuple[int, float | None]] = []
        ctx = Context("EDGE_AI", "edge-node", {"pacs": ("PACS", "10.1.2.3:104")})
        self.sender = AtnaSender(cfg, self.path, self.store, ctx, lambda: self.log.head[0], _Log(),
                                 lambda n, age: self.lag.append((n, age)), confirm_s=0.2)
        self.sender.start()

    def close(self) -> None:
        self.log.close()
        assert self.sender is not None
        self.sender.stop()
        self.store.close()


def atna_cfg(arr: Rsyslog, pki: dict[str, Path], client: bool = False) -> Atna:
    tls = AtnaTLS(ca_certificates=pki["ca"], certificate=pki["client"] if client else None,
                  private_key=pki["client_key"] if client else None)
    return Atna(host="127.0.0.1", port=arr.port, tls=tls)


def record_every_kind(log: AuditLog) -> list[str]:
    """One audited event of each kind the ATNA table names; returns the message each should produce."""
    peer = {"calling_ae": "CT_SCANNER_1", "called_ae": "EDGE_AI", "peer": "127.0.0.1:40001", "tls_identity": "CN=ct1"}
    log.record("node.start", version="0.1.0", ae_title="EDGE_AI", port=11112, pid=42)
    log.record("instance.stored", association="a1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
               sop_instance_uid=f"{STUDY}.1.1", study_uid=STUDY, series_uid=f"{STUDY}.1", bytes=1000, sha256="0" * 64,
               **peer)
    log.record("sr.created", job=1, sr_sop_instance_uid=f"{STUDY}.9.1", study_uid=STUDY, sr_series_uid=f"{STUDY}.9")
    log.record("delivery.attempt", destination="pacs", sr_sop_instance_uid=f"{STUDY}.9.1", attempt=1,
               outcome="retry", reason="connection refused")
    log.record("delivery.attempt", destination="pacs", sr_sop_instance_uid=f"{STUDY}.9.1", attempt=2,
               outcome="delivered", status=0)
    log.record("association.rejected", reason="calling AE title not recognised", result=1, source=1, diagnostic=3,
               calling_ae="INTRUDER", called_ae="EDGE_AI", peer="10.9.9.9:5000")
    log.record("security.alert", alert="node_authentication", reason="calling AE title not recognised",
               calling_ae="INTRUDER", called_ae="EDGE_AI", peer="10.9.9.9:5000")
    log.record("security.alert", alert="node_authentication", peer="10.9.9.8:5001",
               reason="TLS handshake failed: CERTIFICATE_VERIFY_FAILED")
    log.record("auth.failed", peer="10.9.9.7:6000", reason="unknown API key")
    log.record("ui.signin", principal="radiology-it", peer="10.1.1.5:7000")
    log.record("http.request", principal="ris", peer="10.1.1.6:7001", method="GET", path="/v1/jobs?state=done",
               status=200, job_ids=[1, 2])
    log.record("http.request", principal="ris", peer="10.1.1.6:7001", method="GET", path="/v1/jobs/1/sr",
               status=200, job_ids=[1])
    log.record("http.request", principal="ris", peer="10.1.1.6:7001", method="POST", path="/v1/jobs",
               status=202, job_ids=[3])
    log.record("audit.verify_failed", path="/var/lib/edge-ai/audit/audit.jsonl", reason="HMAC mismatch")
    log.record("export.done", out="/srv/export/2026-11", series=4)
    log.record("node.stop", pid=42)
    return ["Application Activity", "DICOM Instances Transferred", "DICOM Instances Transferred", "Security Alert",
            "Security Alert", "Security Alert", "User Authentication", "Query", "DICOM Instances Accessed",
            "Security Alert", "Export", "Application Activity"]


def test_every_audited_kind_arrives_as_a_valid_dicom_audit_message(
        tmp_path: Path, repository: Rsyslog, pki: dict[str, Path]) -> None:
    """The repository receives one PS3.15 A.5 message per audited event the standard defines, in order,
    each valid against the A.5.1 schema, in an RFC 5424 frame with the IHE MSGID."""
    trail = Trail(tmp_path / "node", atna_cfg(repository, pki))
    expected = record_every_kind(trail.log)
    got = repository.wait(len(expected))
    trail.close()
    assert [event_id(m) for m in got] == expected
    for msg in got:
        assert SCHEMA.validate(msg), SCHEMA.error_log
    frames = repository.frames()
    assert all(f.split(" ")[5] == "IHE+RFC-3881" and f.startswith(("<85>1 ", "<84>1 ", "<82>1 ")) for f in frames)
    assert event_types(got[0]) == ["Application Start"] and event_types(got[-1]) == ["Application Stop"]
    stored = got[1]
    sources = [p for p in stored.findall("ActiveParticipant") if p.find("RoleIDCode").get("csd-code") == "110153"]
    assert sources[0].get("UserID") == "CT_SCANNER_1" and sources[0].get("NetworkAccessPointID") == "127.0.0.1"
    study = stored.find("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == STUDY and study.find("ParticipantObjectDescription/SOPClass") is not None
    sent = got[2]
    assert [p.get("UserID") for p in sent.findall("ActiveParticipant")] == ["EDGE_AI", "PACS"]
    assert sent.find("ParticipantObjectIdentification").get("ParticipantObjectID") == STUDY
    detail = got[4].find("ParticipantObjectIdentification/ParticipantObjectDetail")
    assert detail.get("type") == "Alert Description"
    assert base64.b64decode(detail.get("value")).decode().startswith("TLS handshake failed")
    assert got[4].find("ParticipantObjectIdentification").get("ParticipantObjectID") == "10.9.9.8"
    assert [event_types(m) for m in got if event_id(m) == "Security Alert"] == [
        ["Node Authentication"], ["Node Authentication"], ["Use of Restricted Function"], ["Security Configuration"]]


def test_repository_down_for_a_while_loses_nothing_and_keeps_order(
        tmp_path: Path, repository: Rsyslog, pki: dict[str, Path]) -> None:
    """While the repository is stopped, messages wait (the lag shows them), survive a node restart, and
    arrive afterwards in the order they were audited."""
    cfg = atna_cfg(repository, pki)
    trail = Trail(tmp_path / "node", cfg)
    uids = [f"{STUDY}.2.{i}" for i in range(30)]

    def stored(uid: str) -> None:
        trail.log.record("instance.stored", association="a2", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                         sop_instance_uid=uid, study_uid=STUDY, calling_ae="CT1", called_ae="EDGE_AI",
                         peer="127.0.0.1:40002")

    for uid in uids[:5]:
        stored(uid)
    assert len(repository.wait(5)) == 5
    repository.stop()
    for uid in uids[5:15]:
        stored(uid)
        time.sleep(0.05)
    assert wait_for(lambda: trail.lag and trail.lag[-1][0] >= 10 and (trail.lag[-1][1] or 0) > 0, 10), trail.lag[-3:]
    trail.close()  # the node stops while the repository is away ...
    trail = Trail(tmp_path / "node", cfg)  # ... and starts again
    for uid in uids[15:]:
        stored(uid)
    time.sleep(1.0)
    repository.start()

    def arrived() -> list[str]:
        return [m.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass/Instance").get("UID")
                for m in repository.messages()]

    wait_for(lambda: len(set(arrived())) >= len(uids), 60)
    trail.close()
    assert list(dict.fromkeys(arrived())) == uids, f"{len(set(arrived()))} of {len(uids)}"
    print(f"{len(arrived())} messages for {len(uids)} events (resent after the outage: {len(arrived()) - len(uids)})")


def test_mutual_tls_repository_gets_messages_only_from_a_certified_node(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    """A repository that demands client certificates accepts the node's certificate; without one nothing is
    delivered and the messages stay queued."""
    arr = Rsyslog(tmp_path / "arr", pki, mutual=True).start()
    try:
        bare = Trail(tmp_path / "bare", atna_cfg(arr, pki, client=False))
        bare.log.record("node.start", version="0.1.0", ae_title="EDGE_AI", port=1, pid=1)
        time.sleep(2)
        assert arr.messages() == []
        assert bare.sender is not None and bare.sender.lag()[0] == 1
        bare.close()
        certified = Trail(tmp_path / "certified", atna_cfg(arr, pki, client=True))
        certified.log.record("node.start", version="0.1.0", ae_title="EDGE_AI", port=1, pid=2)
        got = arr.wait(1)
        certified.close()
        assert [event_id(m) for m in got] == ["Application Activity"]
    finally:
        arr.stop()
