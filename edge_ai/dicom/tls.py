"""The node's TLS: a BCP 195 server context and the peer identity that goes into the audit.

DICOM PS3.15 Annex B "BCP 195 TLS Secure Transport Connection Profile": TLS 1.2 or later,
forward-secret AEAD cipher suites only, no compression, no renegotiation.
"""

from __future__ import annotations

import ssl
from typing import Any

from edge_ai.config import TLS
from edge_ai.errors import ConfigError

# BCP 195 (RFC 9325) recommended suites for TLS 1.2; TLS 1.3 suites are all acceptable and on by default.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5:!SHA1:!DSS:!RSA+AESGCM"


def server_context(tls: TLS, key: str = "node.tls") -> ssl.SSLContext:
    """Build the listening side's context; mutual TLS where `require_client_certificate`.

    Raises:
        ConfigError: naming the key whose file is missing, unreadable or not a certificate/key.
    """
    if tls.certificate is None or tls.private_key is None:
        raise ConfigError(f"{key}: certificate and private_key are required when enabled is true")
    if tls.require_client_certificate and tls.ca_certificates is None:
        raise ConfigError(f"{key}.ca_certificates: required when require_client_certificate is true")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}.certificate/private_key: cannot load: {exc}") from exc
    if tls.ca_certificates is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_certificates))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{key}.ca_certificates: cannot load: {exc}") from exc
    if tls.require_client_certificate:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL  # verified when offered, but not demanded
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
          "localityName": "L", "stateOrProvinceName": "ST", "emailAddress": "emailAddress"}


def peer_identity(sock: Any) -> str | None:
    """The verified client certificate's subject as an RFC 4514-style string (CN first), or None."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        return None
    if not cert:
        return None
    subject: Any = cert.get("subject", ())
    parts = [f"{_SHORT.get(str(pair[0]), str(pair[0]))}={pair[1]}" for rdn in subject for pair in rdn]
    return ",".join(reversed(parts)) or None
