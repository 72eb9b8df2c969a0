"""Who may talk: allowed callers (AE title + hosts), the called AE title, and TLS with DCMTK as the peer."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_dcmtk
from peers import dcmtk, echo_ok, make_pki, tls_args, wait_for

pytestmark = [pytest.mark.integration, needs_dcmtk]


def _events(node: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in node.audit_events() if e["event"] == name]


def _at_least(node: Any, name: str, n: int) -> list[dict[str, Any]]:
    events = _events(node, name)
    return events if len(events) >= n else []


def _echo(port: int, calling: str, *extra: str, called: str = "EDGE_AI") -> Any:
    return dcmtk("echoscu", "-aet", calling, "-aec", called, "-to", "5", "-ta", "5", *extra,
                 "127.0.0.1", str(port), timeout=30)


def test_caller_from_allowed_host_is_accepted_and_others_rejected(node_factory: Any) -> None:
    """An allowed AE title from an allowed network gets in; the same title from elsewhere and an unknown
    title get A-ASSOCIATE-RJ (calling AE title not recognised) and a security alert naming the peer."""
    node = node_factory(extra={"node": {"allowed_callers": [
        {"ae_title": "CT_SCANNER_1", "hosts": ["127.0.0.0/8"]},
        {"ae_title": "DX_ROOM_2", "hosts": ["10.20.0.0/16"]},
    ]}}).start()
    assert _echo(node.port, "CT_SCANNER_1").returncode == 0

    for calling in ("DX_ROOM_2", "STRANGER"):
        out = _echo(node.port, calling)
        assert out.returncode != 0
        assert "Calling AE Title Not Recognized" in out.stderr + out.stdout, out.stderr

    alerts = wait_for(lambda: _at_least(node, "security.alert", 2), 5)
    assert alerts, node.audit_events()
    by_ae = {a["calling_ae"]: a for a in alerts}
    assert "from 127.0.0.1" in by_ae["DX_ROOM_2"]["reason"]
    assert "not in node.allowed_callers" in by_ae["STRANGER"]["reason"]
    assert all(a["peer"].startswith("127.0.0.1:") for a in alerts)
    rejected = _events(node, "association.rejected")
    assert {(r["result"], r["source"], r["diagnostic"]) for r in rejected} == {(1, 1, 3)}


def test_wrong_called_ae_is_rejected_with_reason(node_factory: Any) -> None:
    """An association addressed to another AE title is refused (called AE not recognised) and audited."""
    node = node_factory().start()
    out = _echo(node.port, "MODALITY", called="NOT_ME")
    assert out.returncode != 0
    assert "Called AE Title Not Recognized" in out.stderr + out.stdout, out.stderr
    alert = wait_for(lambda: _events(node, "security.alert"), 5)
    assert alert and alert[0]["called_ae"] == "NOT_ME"
    assert alert[0]["reason"] == "called AE title not recognised"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_node(node_factory: Any, pki: dict[str, Path], **tls: Any) -> Any:
    cfg = {"enabled": True, "certificate": str(pki["server"]), "private_key": str(pki["server_key"]),
           "ca_certificates": str(pki["ca"]), **tls}
    return node_factory(extra={"node": {"tls": cfg}}).start()


def test_mutual_tls_accepts_client_certificate_and_audits_subject(
    node_factory: Any, pki: dict[str, Path]
) -> None:
    """storescu/echoscu with a client certificate from the trusted CA gets in; its subject is in the audit."""
    node = _tls_node(node_factory, pki)
    out = _echo(node.port, "CT_SCANNER_1", *tls_args(pki))
    assert out.returncode == 0, out.stderr
    accepted = wait_for(lambda: _events(node, "association.accepted"), 5)
    assert accepted and accepted[0]["tls_identity"] == "CN=CT_SCANNER_1,O=Radiology"


def test_tls_without_or_with_untrusted_client_certificate_is_refused(
    node_factory: Any, pki: dict[str, Path]
) -> None:
    """No client certificate, or one from another CA, fails the handshake; it is a security alert."""
    node = _tls_node(node_factory, pki)
    assert _echo(node.port, "CT_SCANNER_1", *tls_args(pki, None)).returncode != 0
    rogue = ("+tls", str(pki["rogue_key"]), str(pki["rogue"]), "+cf", str(pki["ca"]))
    assert _echo(node.port, "CT_SCANNER_1", *rogue).returncode != 0
    alerts = wait_for(lambda: _at_least(node, "security.alert", 2), 5)
    assert alerts and all("TLS handshake failed" in a["reason"] for a in alerts), node.audit_events()
    assert not _events(node, "association.accepted")
    assert echo_ok(node.port, *tls_args(pki)), "a good client still gets in afterwards"


def test_check_config_builds_the_tls_contexts(node_factory: Any, pki: dict[str, Path], tmp_path: Path) -> None:
    """check-config loads the node's certificate, key and CA: a missing CA file is exit 2 naming
    node.tls.ca_certificates, before anyone runs `serve` with it."""
    good = node_factory(extra={"node": {"tls": {"enabled": True, "certificate": str(pki["server"]),
                                                "private_key": str(pki["server_key"]),
                                                "ca_certificates": str(pki["ca"])}}})
    good.write_config()
    assert good.cli("check-config").returncode == 0
    bad = node_factory(extra={"node": {"tls": {"enabled": True, "certificate": str(pki["server"]),
                                               "private_key": str(pki["server_key"]),
                                               "ca_certificates": str(tmp_path / "missing-ca.pem")}}})
    bad.write_config()
    out = bad.cli("check-config")
    assert out.returncode == 2 and "node.tls.ca_certificates" in out.stderr, out.stderr


def test_plain_tcp_is_refused_on_tls_only_node(node_factory: Any, pki: dict[str, Path]) -> None:
    """A modality speaking plain DICOM to a TLS node gets no association."""
    node = _tls_node(node_factory, pki)
    assert _echo(node.port, "CT_SCANNER_1").returncode != 0
    assert wait_for(lambda: _events(node, "security.alert"), 5)
    assert not _events(node, "association.accepted")


def test_tls_optional_client_certificate(node_factory: Any, pki: dict[str, Path]) -> None:
    """With require_client_certificate false, a TLS peer without a certificate gets in."""
    node = _tls_node(node_factory, pki, require_client_certificate=False)
    out = _echo(node.port, "CT_SCANNER_1", *tls_args(pki, None))
    assert out.returncode == 0, out.stderr


def test_tls_handshake_runs_per_connection(node_factory: Any, pki: dict[str, Path]) -> None:
    """An idle TCP connection that never starts its TLS handshake does not block a real modality."""
    node = _tls_node(node_factory, pki)
    idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(4)]
    try:
        start = time.monotonic()
        assert echo_ok(node.port, *tls_args(pki))
        elapsed = time.monotonic() - start
    finally:
        for s in idle:
            s.close()
    print(f"TLS echo with 4 idle handshakes pending: {elapsed:.2f} s")
    assert elapsed < 5


def test_tls_1_1_is_refused(node_factory: Any, pki: dict[str, Path]) -> None:
    """BCP 195: a client limited to TLS 1.1 cannot connect."""
    import ssl

    node = _tls_node(node_factory, pki, require_client_certificate=False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki["ca"]))
    ctx.check_hostname = False
    try:
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except ValueError:
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as raw, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw).do_handshake()
