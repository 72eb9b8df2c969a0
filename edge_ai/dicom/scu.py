"""C-STORE SCU: sends SR files to DICOM destinations; failures come back as edge_ai errors."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

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


KEEP_OPEN_S = 2.0  # an association stays open this long after its last C-STORE, for the next SR


class Associations:
    """Associations to DICOM destinations kept open between C-STOREs, for one thread (the outbox).

    After a C-STORE its association stays open for KEEP_OPEN_S: the next SR to the same destination (a
    busy node's next result) skips association set-up, ~7 ms of a DX's time-to-result against Orthanc
    on this machine. One the destination closed or broke meanwhile is replaced by a new one at once, on
    the same attempt, only when nothing reached it (a status answered, or a timeout, is the attempt's
    outcome, as on a new association). `close_idle` releases the idle ones, `close_all` every one (at
    shutdown; after a reload, associations to a changed destination just fall idle).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._open: dict[tuple[str, ...], tuple[Association, float]] = {}

    def send(self, dest: DicomDestination, path: Path, calling_ae: str) -> int:
        """C-STORE one Part-10 file, on the destination's open association when it has one (else a new
        one, kept open after); returns the (success or warning) status.

        Raises:
            TransientError: connection refused, association rejected or aborted, timeouts, 0xA7xx.
            PermanentError: the destination answered a failure status a retry cannot change.
        """
        ds = pydicom.dcmread(path)
        key = (repr(dest), calling_ae, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        held = self._open.pop(key, None)
        if held is not None:
            try:
                return self._kept(key, held[0], ds)
            except AssociationGone:  # closed or broken while idle, nothing stored: a new association below
                _close(held[0])
        return self._kept(key, _associate(dest, ds, calling_ae), ds)

    def _kept(self, key: tuple[str, ...], assoc: Association, ds: Dataset) -> int:
        """C-STORE `ds` on `assoc`; the association stays open when the destination answered (whatever
        the status), and is closed when it did not (a timeout: never resent here, the outbox retries)."""
        try:
            code = _store(assoc, ds)
        except (PermanentError, StatusError):  # the destination answered: the association is fine
            self._open[key] = (assoc, self.clock())
            raise
        except AssociationGone:
            raise
        except BaseException:
            _close(assoc)
            raise
        self._open[key] = (assoc, self.clock())
        return code

    def next_idle_at(self) -> float | None:
        """When (clock) the first open association falls idle; None when none is open."""
        return min((used + KEEP_OPEN_S for _, used in self._open.values()), default=None)

    def close_idle(self) -> int:
        """Release the associations unused for KEEP_OPEN_S; returns how many."""
        now = self.clock()
        idle = [key for key, (_, used) in self._open.items() if now - used >= KEEP_OPEN_S]
        for key in idle:
            _close(self._open.pop(key)[0])
        return len(idle)

    def close_all(self) -> None:
        for assoc, _ in self._open.values():
            _close(assoc)
        self._open.clear()


def _associate(dest: DicomDestination, ds: Dataset, calling_ae: str) -> Association:
    """An established association to `dest` proposing `ds`'s class and transfer syntax.

    Raises:
        TransientError: connection refused, TLS failure, association rejected, aborted or timed out.
    """
    ae = AE(ae_title=dest.calling_ae_title or calling_ae)
    ae.acse_timeout = dest.timeout_s
    ae.dimse_timeout = dest.timeout_s
    ae.network_timeout = max(dest.timeout_s, KEEP_OPEN_S + 1)  # idle between SRs is not a network fault
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
    _watch_reactor(assoc)
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def _store(assoc: Association, ds: Dataset) -> int:
    """C-STORE `ds` on an established association; returns the (success or warning) status.

    Raises:
        TransientError: no response (timeout, abort, a closed association), or a status worth a retry.
        PermanentError: a failure status a retry cannot change.
    """
    if not assoc.is_established:
        raise AssociationGone("association closed by the destination")
    _pause_reactor(assoc)
    started = time.monotonic()
    try:
        rsp = assoc.send_c_store(ds)
    except (OSError, RuntimeError) as exc:  # pynetdicom: the association went away under the request
        raise AssociationGone(f"C-STORE failed: {exc}") from exc
    if not rsp or "Status" not in rsp:
        # pynetdicom aborts the association when its DIMSE timeout expires: the request went out, the
        # destination may hold the object; the outbox's later retry decides, never a resend here
        timeout = assoc.dimse_timeout
        timed_out = timeout is not None and time.monotonic() - started >= timeout
        if not timed_out and (assoc.is_aborted or not assoc.is_established):
            raise AssociationGone("association aborted before the C-STORE response")
        raise TransientError("no C-STORE response (timeout)")
    code = int(rsp.Status)
    if code == 0x0000 or (code & 0xF000) == 0xB000:
        return code
    if (code >> 8) in _PERMANENT_PREFIXES:
        raise PermanentError(f"destination refused the object: status 0x{code:04X}")
    raise StatusError(f"destination answered status 0x{code:04X}")


_PAUSE_WAIT_S = 1.0  # the longest a C-STORE waits for pynetdicom's reactor to stop


class _Checkpoint(threading.Event):
    """pynetdicom's reactor pause (`Association._reactor_checkpoint`), which also tells when the reactor
    thread is blocked on it (`parked`)."""

    def __init__(self, running: bool) -> None:
        super().__init__()
        self.parked = threading.Event()
        if running:
            self.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Until the flag is set (pynetdicom's reactor never passes a timeout). A reactor woken by a
        `set` whose flag was cleared again before it ran (the next send's pause) parks again: Event.wait
        alone would return True for that wake-up and let it read the queue during the send."""
        while not self.is_set():
            self.parked.set()
            try:
                super().wait(timeout)
            finally:
                self.parked.clear()
            if timeout is not None:
                return self.is_set()
        return True


def _watch_reactor(assoc: Association) -> None:
    """Give a new association a reactor pause that `_pause_reactor` can wait on (see there)."""
    current = getattr(assoc, "_reactor_checkpoint", None)
    if isinstance(current, threading.Event) and not isinstance(current, _Checkpoint):
        assoc._reactor_checkpoint = _Checkpoint(current.is_set())


def _pause_reactor(assoc: Association) -> None:
    """Stop pynetdicom's reactor thread before a C-STORE, so that it cannot take the response.

    `send_c_store` pauses the reactor itself but waits only for its `_is_paused` flag, which the reactor
    raises just before it checks the pause: when that check passed a moment earlier, the reactor goes on
    to read one message, and on a busy machine that message is the C-STORE response ("Received
    unexpected C-STORE service message"): the send waits out its DIMSE timeout and the association is
    aborted. An association kept open between SRs meets it on every send after the first. Here the
    pause is requested and the reactor seen blocked on it. Private pynetdicom attributes: where a
    version lacks them, pynetdicom's own pause is all there is.
    """
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if isinstance(checkpoint, _Checkpoint):
        checkpoint.clear()
        checkpoint.parked.wait(_PAUSE_WAIT_S)  # a reactor that has stopped never parks: send_c_store fails


class AssociationGone(TransientError):
    """The association was closed or broken before the destination answered the C-STORE."""


class StatusError(TransientError):
    """The destination answered the C-STORE with a status worth a later retry (0xA7xx, ...)."""


def _close(assoc: Association) -> None:
    """Release an association still established (abort it if the release fails)."""
    if not assoc.is_established:
        return
    try:
        assoc.release()
    except Exception:  # a peer gone mid-release: nothing is left to tell it
        assoc.abort()
