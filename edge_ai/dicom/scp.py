"""The Storage and Verification SCP: associations and C-STOREs from the transport in, durable spool
entries and statuses out.

No inference here: a C-STORE's data set streams into the spool (fsync'd), is indexed, and answered.
Every rejection goes to the audit log with its reason; errors become statuses here only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_ai.config import Node
from edge_ai.dicom import pdu, status
from edge_ai.dicom.contexts import STORAGE_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from edge_ai.dicom.pdu import Command
from edge_ai.dicom.tls import server_context
from edge_ai.dicom.transport import Association, NodeServer, Policy, callers_from_config
from edge_ai.domain import uid_problem
from edge_ai.errors import Refusal, RejectedInstance
from edge_ai.grouping.completion import Completion
from edge_ai.spool.ingest import Ingest, Receiving, Stored

Audit = Callable[..., None]

# A-ASSOCIATE-RJ (result, source, diagnostic) that are a security alert (PS3.15 A.5.3.11)
_ALERTS = {(0x01, 0x01, 0x03), (0x01, 0x01, 0x07)}
# the one place a refusal becomes a DIMSE status
DIMSE_STATUS = {
    Refusal.OUT_OF_RESOURCES: status.OUT_OF_RESOURCES,
    Refusal.DATASET_MISMATCH: status.DATASET_MISMATCH,
    Refusal.CANNOT_UNDERSTAND: status.CANNOT_UNDERSTAND,
    Refusal.SOP_CLASS_NOT_SUPPORTED: status.SOP_CLASS_NOT_SUPPORTED,
}


class StorageSCP:
    def __init__(
        self,
        node: Node,
        ingest: Ingest,
        audit: Audit,
        log: Any,
        completion: Completion | None = None,
        on_stored: Callable[[Stored], None] = lambda s: None,
    ) -> None:
        self.node = node
        self.ingest = ingest
        self.audit = audit
        self.log = log
        self.on_stored = on_stored
        self.completion = completion
        self._policy: Policy | None = None
        self.server: NodeServer | None = None
        self._stopped: NodeServer | None = None  # kept after stop() for connections still closing
        # built now so a bad certificate, key or CA file fails at start with the key named
        self.ssl_context = server_context(node.tls) if node.tls.enabled else None
        self._supported = {VERIFICATION: TRANSFER_SYNTAXES} | dict.fromkeys(STORAGE_CLASSES, TRANSFER_SYNTAXES)
        if not self.node.allowed_callers:
            self.log.warning("allowed_callers_empty", detail="any calling AE title is accepted")

    def start(self) -> None:
        """Bind the port and serve in background threads."""
        timeouts = self.node.timeouts
        policy = Policy(
            max_pdu_length=self.node.max_pdu_length,
            socket_timeout=timeouts.socket,
            handshake_timeout=timeouts.tls_handshake,
            ssl_context=self.ssl_context,
            callers=callers_from_config(self.node.allowed_callers),
            alert=self._transport_alert,
            max_associations=self.node.max_associations,
            max_connections=4 * self.node.max_associations,
            network_timeout=timeouts.network,
            dimse_timeout=timeouts.dimse,
            acse_timeout=timeouts.acse,
        )
        self._policy = policy
        server = NodeServer(self.node.host, self.node.port, policy, self, self.node.ae_title)
        server.start()
        self.server = server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def close_listener(self) -> None:
        """Stop accepting: new callers are refused; associations in progress go on."""
        if self.server is not None:
            self.server.shutdown()

    def stop(self) -> None:
        """Stop accepting and end the associations still open."""
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.close_all()
        self._stopped = server

    def healthy(self) -> bool:
        return self.server is not None and self.server.healthy()

    def active(self) -> int:
        server = self.server or self._stopped
        return server.active() if server is not None else 0

    # ---- transport.Service ---------------------------------------------------------------------
    def supported(self) -> dict[str, list[str]]:
        return self._supported

    def _transport_alert(self, event: str, **fields: Any) -> None:
        self.log.warning(event.replace(".", "_"), **{k: v for k, v in fields.items() if v is not None})
        self._record(event, **fields)

    def _record(self, event: str, **fields: Any) -> None:
        """An audit line; if the audit cannot be written (its volume full), the DICOM exchange still gets
        its proper answer and the failure is logged loudly instead of dropping the connection."""
        try:
            self.audit(event, **fields)
        except Exception:
            self.log.exception("audit_write_failed", audit_event=event, association=fields.get("association"))

    def echo(self, assoc: Association) -> int:
        return status.SUCCESS

    def begin_store(self, assoc: Association, command: Command, abstract_syntax: str,
                    transfer_syntax: str) -> _Store:
        return _Store(self, assoc, command, abstract_syntax, transfer_syntax)

    def stored(self, assoc: Association, stored: Stored) -> None:
        ref, outcome = stored.ref, stored.outcome
        self._record(
            "instance.stored",
            association=assoc.id,
            sop_class_uid=ref.sop_class_uid,
            sop_instance_uid=ref.sop_instance_uid,
            study_uid=ref.study_instance_uid,
            series_uid=ref.series_instance_uid,
            patient_id=stored.patient_id or None,
            bytes=ref.size,
            sha256=ref.sha256,
            status=status.SUCCESS,
            duplicate=outcome.duplicate or None,
            conflict=outcome.conflict or None,
            reopened=outcome.reopened or None,
            **assoc.fields(),
        )
        if outcome.conflict:
            self._record(
                "instance.conflict",
                association=assoc.id,
                sop_instance_uid=ref.sop_instance_uid,
                sha256=ref.sha256,
                reason="same SOP Instance UID, different content: kept as a new version",
                **assoc.fields(),
            )
        self.on_stored(stored)

    def refused(self, assoc: Association, command: Command, code: int, reason: str) -> None:
        self.log.warning("instance_rejected", status=f"0x{code:04X}", reason=reason)
        self._record(
            "instance.rejected",
            association=assoc.id,
            sop_class_uid=_printable(command.sop_class_uid),
            sop_instance_uid=_printable(command.sop_instance_uid),
            status=code,
            reason=reason,
            **assoc.fields(),
        )

    def accepted(self, assoc: Association) -> None:
        if self.completion is not None:
            caller = self._policy.caller(assoc.calling_ae, assoc.peer_host) if self._policy else None
            self.completion.opened(assoc.id, caller.sends if caller else None)
        refused = sorted(set(assoc.rejected_contexts))
        self._record("association.accepted", association=assoc.id, rejected_contexts=refused or None,
                   **assoc.fields())

    def rejected(self, assoc: Association, result: int, source: int, diagnostic: int, reason: str) -> None:
        fields = {**assoc.fields(), "result": result, "source": source, "diagnostic": diagnostic}
        self._record("association.rejected", reason=reason, **fields)
        if (result, source, diagnostic) in _ALERTS:
            # PS3.15 A.5.3.11 Security Alert, event type (DCM 110126) Node Authentication
            self._transport_alert("security.alert", alert="node_authentication", reason=reason, **fields)

    def released(self, assoc: Association) -> None:
        series = self.completion.closed(assoc.id, released=True) if self.completion is not None else 0
        self._record("association.released", association=assoc.id, series=series or None)

    def aborted(self, assoc: Association, reason: str) -> None:
        self._record("association.aborted", association=assoc.id, reason=reason, **assoc.fields())

    def ended(self, assoc: Association) -> None:
        """However the association ended: a carrier not released (aborted, dropped, an internal error)
        leaves its series to grouping.series_timeout_s (a no-op after a release)."""
        if self.completion is not None:
            self.completion.closed(assoc.id, released=False)


def _printable(uid: str) -> str:
    """A peer's UID for the audit: at most 64 characters, control characters dropped."""
    return "".join(c for c in uid[:64] if c.isprintable())


class _Store:
    """One C-STORE: the transport's sink, streaming into the spool and answering with its status."""

    def __init__(self, scp: StorageSCP, assoc: Association, command: Command, abstract_syntax: str,
                 transfer_syntax: str) -> None:
        self.scp, self.assoc, self.command = scp, assoc, command
        self.receiving: Receiving | None = None
        self.refusal: RejectedInstance | None = None
        affected = command.sop_class_uid
        if affected not in STORAGE_CLASSES:
            self.refusal = RejectedInstance(Refusal.SOP_CLASS_NOT_SUPPORTED, f"SOP class {affected or '(none)'} "
                                            "is not a storage SOP class")
        elif affected != abstract_syntax:
            self.refusal = RejectedInstance(Refusal.DATASET_MISMATCH, f"affected SOP class {affected} differs "
                                            f"from the presentation context {abstract_syntax}")
        elif (problem := uid_problem(command.sop_instance_uid)) is not None:
            self.refusal = RejectedInstance(Refusal.CANNOT_UNDERSTAND, f"Affected SOP Instance UID {problem}")
        else:
            prefix = pdu.file_meta(affected, command.sop_instance_uid, transfer_syntax, assoc.calling_ae)
            self.receiving = scp.ingest.receive(prefix, abstract_syntax, assoc.id, command.sop_instance_uid)

    def write(self, fragment: memoryview) -> None:
        if self.receiving is not None:
            self.receiving.write(fragment)

    def finish(self) -> tuple[int, str]:
        scp = self.scp
        try:
            if self.refusal is not None:
                raise self.refusal
            assert self.receiving is not None
            stored = self.receiving.finish()
        except RejectedInstance as exc:
            code = DIMSE_STATUS[exc.kind]
            scp.refused(self.assoc, self.command, code, exc.reason)
            return code, exc.reason
        except Exception as exc:  # the boundary: anything unexpected is a failure, never Success
            scp.log.exception("store_failed", association=self.assoc.id)
            if self.receiving is not None:
                self.receiving.discard()
            reason = f"internal error: {type(exc).__name__}"
            scp.refused(self.assoc, self.command, status.PROCESSING_FAILURE, reason)
            return status.PROCESSING_FAILURE, reason
        # durable and indexed, so it will be processed: Success even if its audit line fails (_record)
        scp.stored(self.assoc, stored)
        return status.SUCCESS, ""

    def discard(self) -> None:
        if self.receiving is not None:
            self.receiving.discard()
