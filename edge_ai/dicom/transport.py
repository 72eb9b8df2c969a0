"""Hardened transport for the SCP: who may connect, and how long and how much a peer may take.

Stock pynetdicom 3.0.4 leaves four gaps that a node on a hospital network must close itself:
it runs the TLS handshake in the accept loop (one idle connection blocks everyone), reads PDU
bodies with no stall limit, believes any PDU length a peer announces (a 4 GiB claim is buffered),
and checks calling AE titles but not the hosts they come from. Here:

- `NodeServer.get_request` only accepts; `NodeRequestHandler.handle` (one thread per connection)
  does the TLS handshake under `timeouts.tls_handshake` and waits at most `timeouts.socket` for the
  first PDU before an Association (which counts against `max_associations`) is created;
- `BoundedDUL` reads the 6-byte PDU header first and aborts a PDU longer than the limit before
  reading its body; every read is bounded by `timeouts.socket`;
- `CallerACSE` rejects a caller whose (AE title, address) pair is not in `allowed_callers` with
  A-ASSOCIATE-RJ (rejected-permanent, service-user, calling AE title not recognised).
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from edge_ai.dicom.tls import peer_identity

# Non-P-DATA PDUs (association request with many contexts is the largest) never need more than this.
CONTROL_PDU_LIMIT = 1024 * 1024
_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(1, 8))
_RJ_LOCAL_LIMIT = bytes([0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02])

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Alert = Callable[..., None]  # (event, **fields) -> None: the audit, for transport-level events


@dataclass(frozen=True)
class Caller:
    ae_title: str
    networks: tuple[Network, ...]


@dataclass
class Policy:
    """What the transport enforces; built once from `node` config by the SCP."""

    max_pdu_length: int
    socket_timeout: float
    handshake_timeout: float
    ssl_context: ssl.SSLContext | None
    callers: list[Caller]
    alert: Alert
    max_associations: int = 16
    # connections in their handshake or waiting for their first PDU, and live association threads, each
    max_connections: int = 64
    _pending: int = field(default=0, repr=False)
    _admitted: list[Association] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, assoc: Association) -> bool:
        """Take one of `max_associations` slots, held until the association's thread ends.

        pynetdicom's own check counts every acceptor thread, including those still negotiating, so
        in a burst every request sees the limit exceeded and nobody is served; slots are counted here.
        """
        with self._lock:
            self._admitted = [a for a in self._admitted if a.is_alive()]
            if len(self._admitted) >= self.max_associations:
                return False
            self._admitted.append(assoc)
            return True

    def caller_allowed(self, ae_title: str, host: str) -> str | None:
        """None when allowed, else why not (for the audit)."""
        if not self.callers:
            return None
        titled = [c for c in self.callers if c.ae_title == ae_title.strip()]
        if not titled:
            return f"calling AE title {ae_title.strip()!r} is not in node.allowed_callers"
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return f"peer address {host!r} is not an IP address"
        mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        for caller in titled:
            for net in caller.networks:
                if addr in net or (mapped is not None and mapped in net):
                    return None
        return f"calling AE title {ae_title.strip()!r} is not allowed from {host}"

    def try_pending(self) -> bool:
        with self._lock:
            if self._pending >= self.max_connections:
                return False
            self._pending += 1
            return True

    def done_pending(self) -> None:
        with self._lock:
            self._pending -= 1


def callers_from_config(allowed: list[Any]) -> list[Caller]:
    return [
        Caller(c.ae_title, tuple(ipaddress.ip_network(h, strict=False) for h in c.hosts)) for c in allowed
    ]


def refuse(sock: socket.socket) -> None:
    """A-ASSOCIATE-RJ (transient, local limit exceeded) without an Association: read what the peer sent
    (at most 1 s, 64 KiB, so closing does not reset the connection before the answer is read), answer."""
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.recv(65536)
        sock.sendall(_RJ_LOCAL_LIMIT)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    sock.close()


def close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class BoundedDUL(DULServiceProvider):
    """The DUL with PDU length limits and per-read stall limits."""

    def __init__(self, assoc: Association, policy: Policy) -> None:
        super().__init__(assoc)
        self.policy = policy
        self._got_request = False

    def _recv_exact(self, n: int) -> bytearray | None:
        """n bytes, or None when the peer closed, stalled past the socket timeout or errored."""
        assert self.socket is not None and self.socket.socket is not None
        sock = self.socket.socket
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        try:
            while got < n:
                nread = sock.recv_into(view[got:], min(n - got, 1 << 20))
                if nread == 0:
                    return None
                got += nread
        except TimeoutError:
            stalled = f"peer stalled for {self.policy.socket_timeout:g} s in a PDU (node.timeouts.socket)"
            self.policy.alert("association.dropped", reason=stalled, **peer_fields(self.assoc))
            return None
        except OSError:
            return None
        return buf

    def _limit(self, pdu_type: int) -> int:
        return self.policy.max_pdu_length if pdu_type == _P_DATA_TF else CONTROL_PDU_LIMIT

    def _end(self, event: str | None) -> None:
        """Queue the terminal event; before any A-ASSOCIATE-RQ also wake the acceptor reactor at once.

        Stock pynetdicom leaves the Association thread waiting `acse_timeout` for a request that can no
        longer come, holding a `max_associations` slot; None is what its own timeout path receives.
        """
        if event is not None:
            self.event_queue.put(event)
        if not self._got_request:
            self.to_user_queue.put(None)  # type: ignore[arg-type]

    def _read_pdu_data(self) -> None:
        header = self._recv_exact(6)
        if header is None:
            self._end("Evt17")  # transport connection closed
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in _PDU_TYPES:
            self._end("Evt19")  # unrecognised PDU: A-ABORT by the state machine
            return
        if length > self._limit(pdu_type):
            self._abort_oversized(pdu_type, length)
            return
        body = self._recv_exact(length)
        if body is None:
            self._end("Evt17")
            return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception:  # untrusted bytes: any decoder failure is an invalid PDU
            self._end("Evt19")
            return
        self._got_request = self._got_request or pdu_type == 0x01
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _abort_oversized(self, pdu_type: int, length: int) -> None:
        """A-ABORT (service-provider, invalid PDU parameter value), close, never read the body."""
        limit = self._limit(pdu_type)
        self.policy.alert(
            "association.aborted",
            reason=f"PDU type 0x{pdu_type:02X} announces {length} bytes, above the limit of {limit}",
            **peer_fields(self.assoc),
        )
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x06
        assert self.socket is not None and self.socket.socket is not None
        with contextlib.suppress(OSError):
            self.socket.socket.sendall(abort.encode())
        self._end(None)
        self.socket.close()  # Evt17: the state machine ends the association


class CallerACSE(ACSE):
    """ACSE that also checks the calling (AE title, address) pair against `allowed_callers`."""

    def __init__(self, assoc: Association, policy: Policy) -> None:
        super().__init__(assoc)
        self.policy = policy

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        assert rq is not None
        self.requestor.ae_title = rq.calling_ae_title
        refusal = self.policy.caller_allowed(str(rq.calling_ae_title), self.requestor.address)
        if refusal is not None:
            self.assoc._edge_ai_refusal = refusal  # type: ignore[attr-defined]
            self._reject(0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognised
            return
        if not self.policy.admit(self.assoc):
            self._reject(0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local limit
            return
        super()._negotiate_as_acceptor()

    def _reject(self, result: int, source: int, diagnostic: int) -> None:
        self.send_reject(result, source, diagnostic)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


def peer_fields(assoc: Any) -> dict[str, Any]:
    req = assoc.requestor
    return {
        "calling_ae": str(req.ae_title or "").strip() or None,
        "called_ae": str(getattr(assoc.requestor.primitive, "called_ae_title", "") or "").strip() or None,
        "peer": f"{req.address}:{req.port}",
        "tls_identity": getattr(assoc, "_edge_ai_tls", None),
    }


class NodeRequestHandler(RequestHandler):
    """Per-connection thread: TLS handshake and first-PDU wait, both bounded, then the Association."""

    server: NodeServer

    def handle(self) -> None:
        policy = self.server.policy
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        if not policy.try_pending():
            policy.alert("connection.dropped", peer=peer,
                         reason="too many connections awaiting their first PDU")
            # a plain peer gets a DICOM answer; a TLS peer cannot read one before its handshake
            (close_quietly if policy.ssl_context is not None else refuse)(self.request)
            return
        try:
            sock = self._prepare(self.request, peer)
        finally:
            policy.done_pending()
        if sock is None:
            return
        if len(self.server.active_associations) >= policy.max_connections:
            # no thread for it: A-ASSOCIATE-RJ (transient, service-provider presentation, local limit)
            policy.alert("association.rejected", peer=peer, reason="too many open connections",
                         result=2, source=3, diagnostic=2)
            refuse(sock)
            return
        self.request = sock
        assoc = self._create_association()
        assoc._edge_ai_tls = peer_identity(sock)  # type: ignore[attr-defined]
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _prepare(self, sock: socket.socket, peer: str) -> socket.socket | None:
        policy = self.server.policy
        if policy.ssl_context is not None:
            sock.settimeout(policy.handshake_timeout)  # CPython applies it to the whole handshake
            try:
                sock = policy.ssl_context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    reason = f"none within {policy.handshake_timeout:g} s (node.timeouts.tls_handshake)"
                policy.alert("security.alert", alert="node_authentication", peer=peer,
                             reason=f"TLS handshake failed: {reason}")
                close_quietly(sock)
                return None
        sock.settimeout(policy.socket_timeout)
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not pending:
            readable, _, _ = select.select([sock], [], [], policy.socket_timeout)
            if not readable:
                policy.alert("connection.dropped", peer=peer, tls_identity=peer_identity(sock),
                             reason=f"no PDU within {policy.socket_timeout:g} s (node.timeouts.socket)")
                close_quietly(sock)
                return None
        return sock

    def _create_association(self) -> Association:
        """pynetdicom's acceptor set-up, with the bounded DUL and the caller-checking ACSE."""
        policy = self.server.policy
        assoc = Association(self.ae, "acceptor")
        assoc._server = self.server
        assoc.dul = BoundedDUL(assoc, policy)
        assoc.acse = CallerACSE(assoc, policy)
        assoc.acse_timeout = self.ae.acse_timeout  # re-applied: the timers live in the new DUL
        assoc.network_timeout = self.ae.network_timeout
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:  # type: ignore[misc]
                    assoc.bind(event, handler, args)
        return assoc


class NodeServer(ThreadedAssociationServer):
    """Accept loop that only accepts: TLS and everything slow happen in the connection's thread."""

    daemon_threads = True  # a connection stuck in its handshake never holds up shutdown
    request_queue_size = 128  # socketserver's 5 makes the kernel drop SYNs in a burst (1 s+ retries)

    def __init__(self, *args: Any, policy: Policy, **kwargs: Any) -> None:
        self.policy = policy
        kwargs["request_handler"] = NodeRequestHandler
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address
