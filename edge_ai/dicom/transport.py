"""The SCP's transport: who may connect, how long and how much a peer may take, and the association
state machine (PS3.8 9.2) for an acceptor that offers Verification and Storage.

One thread per connection runs the whole association, including the service's store, so a C-STORE
response leaves as soon as the instance is durable with no thread hand-off. Data set fragments go
to the service's sink as they arrive (the spool's temporary file), never gathered in memory.

- `NodeServer` only accepts; the connection's thread does the TLS handshake under
  `timeouts.tls_handshake` and waits at most `timeouts.socket` for the first PDU before it holds
  one of `max_associations` slots;
- every PDU header is read first and a PDU longer than the limit is aborted before its body is
  read; reads inside a PDU stall for at most `timeouts.socket`, the gap between PDUs is
  `timeouts.network`;
- a caller whose (AE title, address) pair is not in `allowed_callers` gets A-ASSOCIATE-RJ
  (rejected-permanent, service-user, calling AE title not recognised).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import itertools
import secrets
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from edge_ai.dicom import pdu, status
from edge_ai.dicom.pdu import Command, PDUError
from edge_ai.dicom.tls import peer_identity

# Non-P-DATA PDUs never need more than this: an A-ASSOCIATE-RQ proposing 128 presentation contexts (the
# most PS3.8 allows) with a dozen transfer syntaxes each, plus a user identity token (a Kerberos or SAML
# assertion can be tens of kilobytes), stays well under 1 MiB.
CONTROL_PDU_LIMIT = 1024 * 1024
_GROW_STEP = 64 * 1024  # a control PDU longer than this is read into a buffer that grows as bytes arrive
_RJ_LOCAL_LIMIT = pdu.encode_associate_rj(0x02, 0x03, 0x02)
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# A-ASSOCIATE-RJ (result, source, diagnostic) the acceptor answers with, in the order it checks them
REJECTIONS = {
    (1, 2, 2): "protocol version not supported",
    (1, 1, 2): "application context name not supported",
    (1, 1, 3): "calling AE title not recognised",
    (1, 1, 7): "called AE title not recognised",
    (2, 3, 2): "local limit exceeded",
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Alert = Callable[..., None]  # (event, **fields) -> None: the audit, for transport-level events


@dataclass(frozen=True)
class Caller:
    ae_title: str
    networks: tuple[Network, ...]
    sends: str | None = None  # allowed_callers[].sends: how it delivers series (grouping)


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
    # connections in their handshake or waiting for their first PDU, and live connection threads, each
    max_connections: int = 64
    network_timeout: float = 60.0  # between messages
    dimse_timeout: float = 60.0  # between the PDUs of one message
    acse_timeout: float = 30.0  # for the A-ASSOCIATE-RQ
    _pending: int = field(default=0, repr=False)
    _admitted: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self) -> bool:
        """Take one of `max_associations` slots; `leave()` gives it back."""
        with self._lock:
            if self._admitted >= self.max_associations:
                return False
            self._admitted += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._admitted -= 1

    def caller_allowed(self, ae_title: str, host: str) -> str | None:
        """None when allowed, else why not (for the audit)."""
        if not self.callers:
            return None
        if not any(c.ae_title == ae_title.strip() for c in self.callers):
            return f"calling AE title {ae_title.strip()!r} is not in node.allowed_callers"
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return f"peer address {host!r} is not an IP address"
        if self.caller(ae_title, host) is None:
            return f"calling AE title {ae_title.strip()!r} is not allowed from {host}"
        return None

    def caller(self, ae_title: str, host: str) -> Caller | None:
        """The first allowed_callers entry matching this AE title and address."""
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        for caller in self.callers:
            if caller.ae_title != ae_title.strip():
                continue
            for net in caller.networks:
                if addr in net or (mapped is not None and mapped in net):
                    return caller
        return None

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
        Caller(c.ae_title, tuple(ipaddress.ip_network(h, strict=False) for h in c.hosts), c.sends) for c in allowed
    ]


def refuse(sock: socket.socket) -> None:
    """A-ASSOCIATE-RJ (transient, local limit exceeded) without an association: read what the peer sent
    (at most 1 s, 64 KiB, so closing does not reset the connection before the answer is read), answer."""
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.recv(65536)
        sock.sendall(_RJ_LOCAL_LIMIT)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    sock.close()


def close_quietly(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# ---- what the transport hands to the service ------------------------------------------------------
@dataclass
class Association:
    id: str
    peer_host: str
    peer_port: int
    tls_identity: str | None = None
    calling_ae: str = ""
    called_ae: str = ""
    # accepted presentation contexts: ID -> (abstract syntax, transfer syntax)
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)
    rejected_contexts: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """Who this is, for the audit and logs (no PHI: AE titles, address, certificate subject)."""
        return {
            "calling_ae": self.calling_ae or None,
            "called_ae": self.called_ae or None,
            "peer": f"{self.peer_host}:{self.peer_port}",
            "tls_identity": self.tls_identity,
        }


class Sink(Protocol):
    """Where one C-STORE data set goes while it arrives."""

    def write(self, fragment: memoryview) -> None:
        """The next fragment of the data set, in order."""

    def finish(self) -> tuple[int, str]:
        """All fragments are in: (DIMSE status, error comment). Success only once it is durable."""

    def discard(self) -> None:
        """The association ended mid-data set: leave nothing behind."""


class Service(Protocol):
    """The SCP behind the transport (edge_ai.dicom.scp.StorageSCP)."""

    def supported(self) -> dict[str, list[str]]:
        """Abstract syntax -> transfer syntaxes accepted for it."""

    def accepted(self, assoc: Association) -> None:
        """The A-ASSOCIATE-AC has been sent."""

    def rejected(self, assoc: Association, result: int, source: int, diagnostic: int, reason: str) -> None:
        """An A-ASSOCIATE-RJ with these values has been sent, for `reason`."""

    def echo(self, assoc: Association) -> int:
        """The status of a C-ECHO."""

    def begin_store(self, assoc: Association, command: Command, abstract_syntax: str,
                    transfer_syntax: str) -> Sink:
        """A C-STORE request is complete: where its data set goes."""

    def released(self, assoc: Association) -> None:
        """A-RELEASE-RP has been sent: every response of the association went out before."""

    def aborted(self, assoc: Association, reason: str) -> None:
        """The association ended without release (A-ABORT either way, or the connection closed)."""

    def ended(self, assoc: Association) -> None:
        """The connection of an established association is over, however it ended (always called last)."""


class _Closed(Exception):
    """The connection is over (peer closed, stalled, aborted or the node is stopping); `reported` when
    the audit already has the reason."""

    def __init__(self, reason: str, reported: bool = False) -> None:
        super().__init__(reason)
        self.reported = reported


class _Drain:
    """Sink for a data set nobody stores (an operation this SCP does not perform)."""

    def write(self, fragment: memoryview) -> None:
        return None

    def finish(self) -> tuple[int, str]:
        return pdu.UNRECOGNIZED_OPERATION, "operation not supported by this SCP"

    def discard(self) -> None:
        return None


class Connection:
    """One association, acceptor side, from the first PDU to release or abort (PS3.8 9.2 state machine,
    reduced to the paths an acceptor meets)."""

    def __init__(self, sock: Any, assoc: Association, policy: Policy, service: Service,
                 ae_title: str) -> None:
        self.sock = sock
        self.assoc = assoc
        self.policy = policy
        self.service = service
        self.ae_title = ae_title
        self._header = bytearray(6)
        self._body = bytearray(0)
        self._admitted = False
        self._established = False
        self._artim = time.monotonic() + policy.acse_timeout  # the whole A-ASSOCIATE-RQ by then
        self._peer_max = 0  # the requestor's maximum P-DATA-TF length (0: no limit)
        self._swallowing: int | None = None

    # ---- reading -------------------------------------------------------------------------------
    def _recv_into(self, view: memoryview, deadline: float, limit: str) -> None:
        """Fill `view`; each read waits at most `timeouts.socket`, the whole at most until `deadline`
        (`limit` names the setting that set it), so a peer trickling bytes cannot hold a slot."""
        got, n = 0, len(view)
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                self._drop(f"PDU not complete within {limit}")
            self.sock.settimeout(min(self.policy.socket_timeout, left))
            try:
                nread = self.sock.recv_into(view[got:], n - got)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    self._drop(f"PDU not complete within {limit}")
                self._drop(f"peer stalled for {self.policy.socket_timeout:g} s in a PDU (node.timeouts.socket)")
            except OSError as exc:
                raise _Closed(f"connection error: {exc.strerror or type(exc).__name__}") from None
            if nread == 0:
                raise _Closed("connection closed by the peer")
            got += nread

    def _drop(self, reason: str) -> NoReturn:
        self._alert("association.dropped", reason)
        raise _Closed(reason, reported=True)

    def _read_pdu(self, idle_timeout: float, key: str = "node.timeouts.network",
                  first: bool = False) -> tuple[int, memoryview]:
        """The next PDU's type and body; waits `idle_timeout` (config `key`) for it to start. The first
        PDU of a connection must be an A-ASSOCIATE-RQ and complete within `timeouts.acse` of the
        connection (the ARTIM timer, PS3.8 9.1.5); any later one within `timeouts.dimse` of its start."""
        header = memoryview(self._header)
        self.sock.settimeout(max(idle_timeout, 0.001))
        try:
            got = self.sock.recv_into(header, 6)
        except TimeoutError:
            reason = f"no PDU for {idle_timeout:g} s ({key})"
            self._abort(reason, 0x00)
            raise _Closed(reason, reported=True) from None
        except OSError as exc:
            raise _Closed(f"connection error: {exc.strerror or type(exc).__name__}") from None
        if got == 0:
            raise _Closed("connection closed by the peer")
        if first:
            deadline, limit = self._artim, f"{self.policy.acse_timeout:g} s of connecting (node.timeouts.acse)"
        else:
            deadline = time.monotonic() + self.policy.dimse_timeout
            limit = f"{self.policy.dimse_timeout:g} s (node.timeouts.dimse)"
        if got < 6:
            self._recv_into(header[got:], deadline, limit)
        kind, _, length = struct.unpack(">BBL", self._header)
        if not pdu.ASSOCIATE_RQ <= kind <= pdu.ABORT:
            reason = f"unrecognised PDU type 0x{kind:02X}"
            self._abort(reason, 0x01)
            raise _Closed(reason, reported=True)
        if first and kind != pdu.ASSOCIATE_RQ:
            self._abort("first PDU is not an A-ASSOCIATE-RQ", 0x02)  # before reading its body
            raise _Closed("unexpected PDU", reported=True)
        limit_bytes = self.policy.max_pdu_length if kind == pdu.P_DATA_TF else CONTROL_PDU_LIMIT
        if length > limit_bytes:
            reason = f"PDU type 0x{kind:02X} announces {length} bytes, above the limit of {limit_bytes}"
            self._alert("association.aborted", reason)
            with contextlib.suppress(_Closed):
                self._send(pdu.encode_abort(0x02, 0x06))
            raise _Closed(reason, reported=True)
        if kind != pdu.P_DATA_TF and length > _GROW_STEP:
            # a large association request: memory follows the bytes that actually arrive, and is not kept
            return kind, memoryview(self._recv_growing(length, deadline, limit))
        if len(self._body) < length:
            self._body = bytearray(length if first else max(length, min(2 * len(self._body), limit_bytes)))
        body = memoryview(self._body)[:length]
        self._recv_into(body, deadline, limit)
        return kind, body

    def _recv_growing(self, length: int, deadline: float, limit: str) -> bytearray:
        """`length` bytes read in steps of `_GROW_STEP` into a buffer that grows with them."""
        out, step = bytearray(), bytearray(_GROW_STEP)
        while len(out) < length:
            view = memoryview(step)[:min(_GROW_STEP, length - len(out))]
            self._recv_into(view, deadline, limit)
            out += view
        return out

    def _send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self.policy.socket_timeout)  # not whatever the last read left
            self.sock.sendall(data)
        except OSError as exc:
            raise _Closed(f"connection error: {exc.strerror or type(exc).__name__}") from None

    def _alert(self, event: str, reason: str) -> None:
        """A transport-level event for the audit and the log (security relevant: always both)."""
        ident = self.assoc.id if self._established else None
        self.policy.alert(event, association=ident, reason=reason, **self.assoc.fields())

    def _abort(self, reason: str, diagnostic: int) -> None:
        """A-ABORT (service provider) to the peer; the association is over."""
        with contextlib.suppress(_Closed):
            self._send(pdu.encode_abort(0x02, diagnostic))
        if self._established:
            self.service.aborted(self.assoc, reason)

    # ---- the association -----------------------------------------------------------------------
    def serve(self) -> None:
        try:
            self._serve()
        except _Closed as closed:
            if self._established and not closed.reported:
                self.service.aborted(self.assoc, str(closed))
        except Exception as exc:  # the thread's boundary: end this association cleanly, keep the node
            reason = f"internal error: {type(exc).__name__}"
            with contextlib.suppress(Exception):
                self._send(pdu.encode_abort(0x02, 0x00))
            with contextlib.suppress(Exception):
                self._alert("association.aborted", reason)
        finally:
            if self._admitted:
                self.policy.leave()
            close_quietly(self.sock)
            if self._established:
                self.service.ended(self.assoc)

    def _serve(self) -> None:
        _, body = self._read_pdu(self._artim - time.monotonic(), "node.timeouts.acse", first=True)
        try:
            rq = pdu.parse_associate_rq(body)
        except PDUError as exc:
            self._abort(f"malformed A-ASSOCIATE-RQ: {exc}", 0x06)
            raise _Closed(str(exc), reported=True) from None
        if not self._negotiate(rq):
            return
        self._established = True
        self.service.accepted(self.assoc)
        self._transfer()

    def _negotiate(self, rq: pdu.AssociateRQ) -> bool:
        """A-ASSOCIATE-AC, or -RJ with the reason given to the service; True when accepted."""
        a = self.assoc
        a.calling_ae, a.called_ae = rq.calling_ae, rq.called_ae
        self._peer_max = rq.max_pdu_length
        checks: list[tuple[Callable[[], str | None], tuple[int, int, int]]] = [
            (lambda: None if rq.protocol_version & 1 else f"protocol version {rq.protocol_version}", (1, 2, 2)),
            (lambda: None if rq.application_context == pdu.APPLICATION_CONTEXT
             else f"application context {rq.application_context!r} not supported", (1, 1, 2)),
            (lambda: self.policy.caller_allowed(rq.calling_ae, a.peer_host), (1, 1, 3)),
            (lambda: None if rq.called_ae == self.ae_title else "called AE title not recognised", (1, 1, 7)),
        ]
        for check, (result, source, diagnostic) in checks:
            refusal = check()
            if refusal is not None:
                self._reject(result, source, diagnostic, refusal)
                return False
        if not self.policy.admit():
            self._reject(2, 3, 2, "local limit exceeded: node.max_associations")
            return False
        self._admitted = True
        supported = self.service.supported()
        results: dict[int, tuple[int, str]] = {}
        for ident, (abstract, transfers) in rq.contexts.items():
            offered = supported.get(abstract)
            # the node's preference (uncompressed, lossless, lossy), not the order the caller proposed
            chosen = next((ts for ts in offered if ts in transfers), None) if offered else None
            if offered is None:
                results[ident] = (pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, transfers[0] if transfers else "")
                a.rejected_contexts.append(abstract)
            elif chosen is None:
                results[ident] = (pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, transfers[0] if transfers else "")
                a.rejected_contexts.append(abstract)
            else:
                results[ident] = (pdu.ACCEPTANCE, chosen)
                a.contexts[ident] = (abstract, chosen)
        self._send(pdu.encode_associate_ac(rq, results, self.policy.max_pdu_length))
        return True

    def _reject(self, result: int, source: int, diagnostic: int, reason: str) -> None:
        with contextlib.suppress(_Closed):
            self._send(pdu.encode_associate_rj(result, source, diagnostic))
        self.service.rejected(self.assoc, result, source, diagnostic, reason)

    def _transfer(self) -> None:
        """P-DATA until A-RELEASE-RQ or A-ABORT. One message at a time: a data set is consumed, stored
        and answered before the next PDU is read, so release always follows the last response."""
        command = bytearray()
        request: Command | None = None
        context_id = 0
        sink: Sink | None = None
        # a C-ECHO that wrongly announced a data set was answered at once (PS3.7 9.3.5: it has none);
        # data set fragments on its context are dropped until the next command or release
        self._swallowing = None
        try:
            while True:
                if request is None and not command:
                    kind, body = self._read_pdu(self.policy.network_timeout)
                else:
                    kind, body = self._read_pdu(self.policy.dimse_timeout, "node.timeouts.dimse")
                if kind == pdu.RELEASE_RQ:
                    self._swallowing = None
                    if request is not None or command:
                        self._protocol_error("A-RELEASE-RQ in the middle of a message")
                    self._send(pdu.RELEASE_RP_PDU)
                    self.service.released(self.assoc)
                    return
                if kind == pdu.ABORT:
                    raise _Closed("peer sent A-ABORT")
                if kind != pdu.P_DATA_TF:
                    self._protocol_error(f"unexpected PDU type 0x{kind:02X} during the association")
                try:
                    pdvs = list(pdu.iter_pdvs(body))
                except PDUError as exc:
                    self._protocol_error(str(exc))
                for ident, control, fragment in pdvs:
                    if self._swallowing is not None:
                        if not control & 0x01 and ident == self._swallowing and request is None and not command:
                            if control & 0x02:
                                self._swallowing = None
                            continue
                        self._swallowing = None
                    if ident not in self.assoc.contexts or (request is not None and ident != context_id):
                        self._protocol_error(f"PDV on presentation context {ident}, not the message's")
                    if control & 0x01:  # command fragment
                        if request is not None:
                            self._protocol_error("command fragment while a data set is expected")
                        if command and ident != context_id:
                            self._protocol_error("command fragments on different presentation contexts")
                        context_id = ident
                        command += fragment
                        if len(command) > 65536:
                            self._protocol_error("command set longer than 64 KiB")
                        if control & 0x02:
                            try:
                                cmd = pdu.decode_command(command)
                            except PDUError as exc:
                                self._protocol_error(str(exc))
                            command.clear()
                            request, sink = self._begin(cmd, ident)
                            if request is None:
                                sink = None
                    else:  # data set fragment
                        if request is None or sink is None:
                            self._protocol_error("data set fragment without a command that announces one")
                        sink.write(fragment)
                        if control & 0x02:
                            done, sink = sink, None
                            code, comment = done.finish()
                            self._respond(request, context_id, code, comment)
                            request = None
        finally:
            if sink is not None:
                sink.discard()

    def _begin(self, cmd: Command, context_id: int) -> tuple[Command | None, Sink | None]:
        """Act on a complete command set: answer now, or return the sink its data set goes to."""
        abstract, transfer = self.assoc.contexts[context_id]
        if cmd.command_field == pdu.C_ECHO_RQ:  # answered at once, whatever its Command Data Set Type says
            self._respond(cmd, context_id, self.service.echo(self.assoc))
            if cmd.has_data_set:
                self._swallowing = context_id
            return None, None
        if cmd.command_field == pdu.C_CANCEL_RQ:
            return None, None
        if cmd.command_field == pdu.C_STORE_RQ:
            if cmd.has_data_set:
                return cmd, self.service.begin_store(self.assoc, cmd, abstract, transfer)
            self._respond(cmd, context_id, status.CANNOT_UNDERSTAND, "C-STORE request without a data set")
            return None, None
        if cmd.has_data_set:
            return cmd, _Drain()
        self._respond(cmd, context_id, pdu.UNRECOGNIZED_OPERATION, "operation not supported by this SCP")
        return None, None

    def _respond(self, cmd: Command, context_id: int, code: int, comment: str = "") -> None:
        self._send(pdu.encode_pdata(context_id, pdu.encode_response(cmd, code, comment), self._peer_max))

    def _protocol_error(self, reason: str) -> NoReturn:
        """A-ABORT (service provider, unexpected PDU / invalid parameter) and end the connection."""
        self._abort(f"protocol error: {reason}", 0x02)
        raise _Closed(reason, reported=True)


# ---- accepting --------------------------------------------------------------------------------------
class NodeServer:
    """Listening socket and accept loop; each connection gets its own thread."""

    def __init__(self, host: str, port: int, policy: Policy, service: Service, ae_title: str) -> None:
        self.policy = policy
        self.service = service
        self.ae_title = ae_title
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # backlog 128: a small one makes the kernel drop SYNs in a burst (1 s+ retries)
        dualstack = host == "::" and socket.has_dualstack_ipv6()  # "::" also takes IPv4 callers
        self.socket = socket.create_server((host, port), family=family, backlog=128, dualstack_ipv6=dualstack)
        self.server_address = self.socket.getsockname()
        self._ids = itertools.count(1)
        # association ids are unique across restarts too: audit lines of two runs never share one
        self._run = secrets.token_hex(4)
        self._live: dict[int, Any] = {}
        # connection threads at most: pending + established + refusals still answering
        self._max_threads = 2 * policy.max_connections + policy.max_associations
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-acceptor", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([self.socket], [], [], 0.2)
                if not readable:
                    continue
                sock, address = self.socket.accept()
            except (OSError, ValueError) as exc:
                if self._stopping.is_set():
                    return
                if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
                    time.sleep(0.1)  # out of descriptors or buffers: let connections close, do not spin
                continue
            try:
                self._spawn(sock, address)
            except Exception:  # the accept loop never dies with one connection
                close_quietly(sock)

    def _spawn(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        with self._lock:
            crowded = len(self._live) >= self._max_threads
        if crowded:  # a connection flood: no thread, no answer, no audit line per connection
            close_quietly(sock)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ident = next(self._ids)
        thread = threading.Thread(target=self._handle, args=(sock, address, ident),
                                  name=f"dicom-conn-{ident}", daemon=True)
        with self._lock:
            self._live[ident] = sock
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._live.pop(ident, None)
            raise

    def healthy(self) -> bool:
        """The accept loop is running (what the systemd watchdog is fed on)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket: new callers are refused."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            self.socket.close()

    def close_all(self) -> None:
        """End every connection still open (the node is stopping)."""
        with self._lock:
            live = list(self._live.values())
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def active(self) -> int:
        with self._lock:
            return len(self._live)

    def _handle(self, sock: socket.socket, address: tuple[Any, ...], ident: int) -> None:
        try:
            self._handle_connection(sock, address, ident)
        finally:
            with self._lock:
                self._live.pop(ident, None)

    def _handle_connection(self, sock: socket.socket, address: tuple[Any, ...], ident: int) -> None:
        policy = self.policy
        peer = f"{address[0]}:{address[1]}"
        if not policy.try_pending():
            policy.alert("connection.dropped", peer=peer, reason="too many connections awaiting their first PDU")
            # a plain peer gets a DICOM answer; a TLS peer cannot read one before its handshake
            (close_quietly if policy.ssl_context is not None else refuse)(sock)
            return
        try:
            prepared = self._prepare(sock, peer, ident)
        finally:
            policy.done_pending()
        if prepared is None:
            return
        if self.active() > policy.max_connections:
            policy.alert("association.rejected", peer=peer, reason="too many open connections",
                         result=2, source=3, diagnostic=2)
            refuse(prepared)
            return
        with self._lock:
            self._live[ident] = prepared
        assoc = Association(id=f"{self._run}-a{ident}", peer_host=str(address[0]), peer_port=int(address[1]),
                            tls_identity=peer_identity(prepared))
        Connection(prepared, assoc, policy, self.service, self.ae_title).serve()

    def _prepare(self, sock: socket.socket, peer: str, ident: int) -> socket.socket | None:
        """TLS handshake (bounded), then wait (bounded) for the first PDU to start."""
        policy = self.policy
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
            with self._lock:
                if ident in self._live:
                    self._live[ident] = sock  # what close_all() must shut down from now on
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
