"""DICOM audit messages built from audit lines: valid per PS3.15 A.5.1, no secrets, framed per RFC 5424/5425."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from edge_ai import cli
from edge_ai.observability import atna
from edge_ai.observability.atna_sender import frame

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parents[1] / "data" / "dicom-audit-message.rng")))
CTX = atna.Context("EDGE_AI", "node1", {"pacs": ("PACS", "10.0.0.9:104")})
T = "2026-11-29T12:00:00.000001Z"

EVENTS = {
    "node.start": {"pid": 1},
    "node.stop": {"pid": 1},
    "instance.stored": {"calling_ae": "CT1", "peer": "10.0.0.1:4000", "study_uid": "1.2.3", "patient_id": "PID-77",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "1.2.3.4"},
    "delivery.attempt": {"destination": "pacs", "sr_sop_instance_uid": "1.2.3.9", "outcome": "delivered"},
    "security.alert": {"peer": "[::1]:4000", "reason": "TLS handshake failed"},
    "auth.failed": {"peer": "10.0.0.2:1", "reason": "bad key"},
    "audit.verify_failed": {"path": "/var/lib/edge-ai/audit/audit.jsonl", "reason": "HMAC mismatch"},
    "ui.signin": {"principal": "it", "peer": "10.0.0.3:5"},
    "ui.signout": {"principal": "it", "peer": "10.0.0.3:5", "outcome": "ok"},
    "http.request": {"principal": "ris", "peer": "10.0.0.4:6", "method": "GET", "path": "/v1/jobs/5", "status": 200,
                     "job_ids": [5]},
    "export.done": {"out": "/srv/x", "series": 3},
}


@pytest.mark.parametrize("event", sorted(atna.MESSAGES))
def test_every_mapped_event_makes_one_valid_message(event: str) -> None:
    """Each event the table names becomes one message the PS3.15 A.5.1 schema accepts."""
    xml = atna.message({"seq": 1, "time": T, "event": event, **EVENTS[event]}, CTX)
    assert xml is not None
    doc = etree.fromstring(xml)
    assert SCHEMA.validate(doc), SCHEMA.error_log


def test_events_outside_the_table_and_non_reads_make_none() -> None:
    """Job states, retries and HTTP submissions are not ATNA events: no message."""
    assert atna.message({"seq": 1, "time": T, "event": "job.state"}, CTX) is None
    assert atna.message({"seq": 1, "time": T, "event": "delivery.attempt", "outcome": "retry"}, CTX) is None
    assert atna.message({"seq": 1, "time": T, "event": "http.request", "method": "POST", "path": "/v1/jobs"},
                        CTX) is None


def test_instances_transferred_name_the_patient_by_id_and_the_study_only() -> None:
    """Received and sent instances carry the Patient ID and the Study Instance UID as participant objects
    (PS3.15 A.5.3.4), and nothing else of the patient."""
    ctx = atna.Context("EDGE_AI", "node1", {"pacs": ("PACS", "10.0.0.9:104")})
    atna.message({"seq": 1, "time": T, "event": "sr.created", "sr_sop_instance_uid": "1.2.3.9", "study_uid": "1.2.3",
                  "patient_id": "PID-77"}, ctx)
    for event in ("instance.stored", "delivery.attempt"):
        xml = atna.message({"seq": 2, "time": T, "event": event, **EVENTS[event], "patient_name": "DOE^JANE"}, ctx)
        assert xml is not None and SCHEMA.validate(etree.fromstring(xml)), event
        doc = etree.fromstring(xml)
        objects = {(o.get("ParticipantObjectTypeCode"), o.get("ParticipantObjectTypeCodeRole")): o.get(
            "ParticipantObjectID") for o in doc.iter("ParticipantObjectIdentification")}
        assert objects == {("1", "1"): "PID-77", ("2", "3"): "1.2.3"}, event
        assert b"DOE" not in xml


def test_no_secret_or_unlisted_field_leaks_into_a_message() -> None:
    """Fields the builders do not name (a token, a patient name) never reach the repository."""
    xml = atna.message({"seq": 1, "time": T, "event": "ui.signin", "principal": "it", "peer": "10.0.0.3:5",
                        "token": "sekrit-api-key", "patient_name": "DOE^JANE"}, CTX)
    assert xml is not None and b"sekrit" not in xml and b"DOE" not in xml


def test_frame_is_octet_counted_rfc5424_with_a_bom() -> None:
    """The TLS frame is 'LEN SP <PRI>1 TIMESTAMP HOST APP - MSGID - BOM XML' with LEN the exact byte count."""
    entry = {"seq": 1, "time": T, "event": "security.alert", "peer": "10.0.0.1:1", "reason": "x"}
    xml = atna.message(entry, CTX)
    assert xml is not None
    data = frame(entry, xml, "node1")
    length, _, msg = data.partition(b" ")
    assert int(length) == len(msg)
    assert msg.startswith(f"<84>1 {T} node1 edge-ai - IHE+RFC-3881 - ".encode() + b"\xef\xbb\xbf<?xml")


def test_check_config_names_unreadable_atna_tls_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing repository CA file fails check-config with exit 2, naming audit.atna.tls."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"storage: {{root: {tmp_path}}}\nmodels: []\nrouting: []\n"
                   f"audit: {{atna: {{host: arr, tls: {{ca_certificates: {tmp_path}/none.crt}}}}}}\n")
    assert cli.main(["check-config", "--config", str(cfg)]) == 2
    assert "audit.atna.tls" in capsys.readouterr().err


@pytest.mark.parametrize(("audit", "key"), [
    ("{seal_every: 0}", "audit.seal_every"),
    ("{segment_bytes: 10}", "audit.segment_bytes"),
    ("{atna: {host: arr, tls: {certificate: c.crt}}}", "audit.atna.tls"),
    ("{atna: {port: 6514}}", "audit.atna.host"),
])
def test_bad_audit_settings_are_named(tmp_path: Path, audit: str, key: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Invalid audit settings fail with exit 2 and a message naming the key."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"storage: {{root: {tmp_path}}}\naudit: {audit}\n")
    assert cli.main(["check-config", "--config", str(cfg)]) == 2
    assert key in capsys.readouterr().err
