"""C-STORE SCU: sends one SR file to a DICOM destination; failures come back as edge_ai errors."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pydicom
from pynetdicom import AE

from edge_ai.config import TLS, DicomDestination
from edge_ai.errors import PermanentError, TransientError

# Statuses that a resend cannot fix: the destination refuses this object for good.
_PERMANENT_PREFIXES = (0xA9, 0xC0, 0x01)


def client_tls_context(tls: TLS) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_certificates or "") or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.certificate and tls.private_key:
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return ctx


def send_file(dest: DicomDestination, path: Path, calling_ae: str) -> int:
    """C-STORE one Part-10 file; returns the (success or warning) status.

    Raises:
        TransientError: connection refused, association rejected or aborted, timeouts, 0xA7xx.
        PermanentError: the destination answered a failure status a retry cannot change.
    """
    ds = pydicom.dcmread(path)
    ae = AE(ae_title=dest.calling_ae_title or calling_ae)
    ae.acse_timeout = dest.timeout_s
    ae.dimse_timeout = dest.timeout_s
    ae.network_timeout = dest.timeout_s
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    tls_args = (client_tls_context(dest.tls), dest.host) if dest.tls.enabled else None
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:
        raise TransientError(f"cannot connect: {exc}") from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            raise TransientError("association rejected by the destination")
        raise TransientError("association not established (refused, aborted or timed out)")
    try:
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rsp = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    if not rsp or "Status" not in rsp:
        raise TransientError("no C-STORE response (timeout or abort)")
    code = int(rsp.Status)
    if code == 0x0000 or (code & 0xF000) == 0xB000:
        return code
    if (code >> 8) in _PERMANENT_PREFIXES:
        raise PermanentError(f"destination refused the object: status 0x{code:04X}")
    raise TransientError(f"destination answered status 0x{code:04X}")
