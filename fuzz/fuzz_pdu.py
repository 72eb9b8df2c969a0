"""Fuzz the SCP's association handling: bytes as they arrive on one connection -> the node's transport
(PDU header and length limits, A-ASSOCIATE-RQ parsing, the allowed-callers check, presentation
context negotiation, P-DATA-TF/PDV walking, DIMSE command decoding, the per-message state machine).

The connection runs exactly as in the node, on a stand-in socket that yields the fuzzer's bytes and
then EOF, with a stand-in service (no spool). Allowed outcome: `Connection.serve` returns (every
protocol error is answered with A-ABORT or A-ASSOCIATE-RJ inside it). A finding is any exception out
of it, a hang, or runaway memory.

    python fuzz/fuzz_pdu.py CORPUS_DIR -runs=50000 -rss_limit_mb=2048 -timeout=10
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["edge_ai"]):
    from edge_ai.dicom.contexts import STORAGE_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
    from edge_ai.dicom.pdu import Command
    from edge_ai.dicom.transport import Association, Caller, Connection, Policy

SUPPORTED = {VERIFICATION: list(TRANSFER_SYNTAXES)} | {uid: list(TRANSFER_SYNTAXES) for uid in STORAGE_CLASSES}
POLICY = Policy(max_pdu_length=16384, socket_timeout=1.0, handshake_timeout=1.0, ssl_context=None,
                callers=[Caller("MODALITY", (ipaddress.ip_network("10.0.0.0/8"),)),
                         Caller("CT_SCANNER_1", (ipaddress.ip_network("10.1.2.0/24"),))],
                alert=lambda *a, **k: None, max_associations=1_000_000)


class _Wire:
    """The socket as the connection sees it: recv_into from the fuzzer's bytes, then EOF."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.sent = 0

    def recv_into(self, buf: memoryview, n: int = 0) -> int:
        n = min(n or len(buf), len(buf), len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def sendall(self, data: bytes) -> None:
        self.sent += len(data)

    def settimeout(self, _: float) -> None:
        return None

    def shutdown(self, _: int) -> None:
        return None

    def close(self) -> None:
        return None


class _Sink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, fragment: memoryview) -> None:
        self.size += len(fragment)

    def finish(self) -> tuple[int, str]:
        return 0, ""

    def discard(self) -> None:
        return None


class _Service:
    def supported(self) -> dict[str, list[str]]:
        return SUPPORTED

    def accepted(self, assoc: Association) -> None:
        return None

    def rejected(self, assoc: Association, result: int, source: int, diagnostic: int, reason: str) -> None:
        return None

    def echo(self, assoc: Association) -> int:
        return 0

    def begin_store(self, assoc: Association, command: Command, abstract_syntax: str,
                    transfer_syntax: str) -> _Sink:
        return _Sink()

    def released(self, assoc: Association) -> None:
        return None

    def aborted(self, assoc: Association, reason: str) -> None:
        return None

    def ended(self, assoc: Association) -> None:
        return None


SERVICE = _Service()


def one_input(data: bytes) -> None:
    assoc = Association(id="a1", peer_host="10.1.2.3", peer_port=40000)
    Connection(_Wire(data), assoc, POLICY, SERVICE, "EDGE_AI").serve()


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
