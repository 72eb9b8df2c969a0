"""Fuzz the SCP's message handling: bytes as they arrive on a connection -> the node's bounded DUL
(header, length limit, body) -> PDU decoders -> primitives -> DIMSE message decoding, and the
allowed-callers check on whatever AE title and address come out.

Allowed outcomes: the DUL queues an event (a PDU, Evt17 closed, Evt19 invalid: what the state machine
answers with A-ABORT); later stages may raise, since pynetdicom's reactor turns that into an A-ABORT.
A hang, runaway memory or an exception out of the DUL read is a finding.

    python fuzz/fuzz_pdu.py CORPUS_DIR -runs=50000 -rss_limit_mb=2048 -timeout=10
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["edge_ai", "pynetdicom"]):
    from pynetdicom import AE
    from pynetdicom.association import Association
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.transport import AddressInformation

    from edge_ai.dicom.transport import BoundedDUL, Caller, Policy

logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
POLICY = Policy(max_pdu_length=16384, socket_timeout=1.0, handshake_timeout=1.0, ssl_context=None,
                callers=[Caller("CT_SCANNER_1", (ipaddress.ip_network("10.0.0.0/8"),))],
                alert=lambda *a, **k: None)


class _Wire:
    """The socket as the DUL sees it: recv_into from the fuzzer's bytes, then EOF."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def recv_into(self, buf: Any, n: int) -> int:
        n = min(n, len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def sendall(self, _: bytes) -> None:
        return None


class _AssocSocket:
    def __init__(self, data: bytes) -> None:
        self.socket = _Wire(data)

    def close(self) -> None:
        self.socket = None  # type: ignore[assignment]


AE_ = AE(ae_title="EDGE_AI")
ASSOC = Association(AE_, "acceptor")
ASSOC.requestor.address_info = AddressInformation.from_tuple(("10.1.2.3", 40000))


def one_input(data: bytes) -> None:
    dul = BoundedDUL(ASSOC, POLICY)
    dul.socket = _AssocSocket(data)  # type: ignore[assignment]
    for _ in range(8):  # a few PDUs per input, as on one connection
        wire = getattr(dul.socket, "socket", None)
        if wire is None or not wire.data:
            break
        dul._read_pdu_data()
    while not dul._recv_pdu.empty():
        pdu = dul._recv_pdu.get()
        try:
            primitive = pdu.to_primitive()
        except Exception:  # the reactor answers A-ABORT  # noqa: S112
            continue
        calling = getattr(primitive, "calling_ae_title", None)
        if isinstance(calling, str):
            POLICY.caller_allowed(calling, "10.1.2.3")
        for item in getattr(primitive, "presentation_data_value_list", None) or []:
            msg = DIMSEMessage()
            try:
                msg.decode_msg(type("P", (), {"presentation_data_value_list": [item]})())
            except Exception:  # noqa: S112
                continue


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
