"""The Storage and Verification SCP: pynetdicom events in, durable spool entries and statuses out.

No inference here: the C-STORE handler stores the received bytes (fsync'd), indexes them, and
answers. Every rejection goes to the audit log with its reason; errors become statuses here only.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import AE, evt

from edge_ai.config import Node
from edge_ai.dicom import status
from edge_ai.dicom.contexts import STORAGE_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from edge_ai.dicom.tls import server_context
from edge_ai.dicom.transport import NodeServer, Policy, callers_from_config, peer_fields
from edge_ai.errors import RejectedInstance
from edge_ai.spool.ingest import Ingest, Stored

Audit = Callable[..., None]

# A-ASSOCIATE-RJ (result, source, diagnostic) -> what the audit says, and whether it is a security alert
_REJECTIONS = {
    (0x01, 0x01, 0x03): ("calling AE title not recognised", True),
    (0x01, 0x01, 0x07): ("called AE title not recognised", True),
    (0x02, 0x03, 0x02): ("local limit exceeded: node.max_associations", False),
    (0x02, 0x02, 0x01): ("user identity not accepted", True),
}


class StorageSCP:
    def __init__(
        self,
        node: Node,
        ingest: Ingest,
        audit: Audit,
        log: Any,
        on_stored: Callable[[Stored], None] = lambda s: None,
        on_release: Callable[[], None] = lambda: None,
    ) -> None:
        self.node = node
        self.ingest = ingest
        self.audit = audit
        self.log = log
        self.on_stored = on_stored
        self.on_release = on_release
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server: NodeServer | None = None
        # built now so a bad certificate, key or CA file fails at start with the key named
        self.ssl_context = server_context(node.tls) if node.tls.enabled else None
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.node.ae_title)
        # counted by transport.Policy.admit (pynetdicom's count includes requests still negotiating)
        ae.maximum_associations = 1_000_000
        ae.maximum_pdu_size = self.node.max_pdu_length
        ae.acse_timeout = self.node.timeouts.acse
        ae.dimse_timeout = self.node.timeouts.dimse
        ae.network_timeout = self.node.timeouts.network
        ae.require_called_aet = True
        # calling AE title *and* host are checked together in transport.CallerACSE, not by pynetdicom
        if not self.node.allowed_callers:
            self.log.warning("allowed_callers_empty", detail="any calling AE title is accepted")
        ae.add_supported_context(VERIFICATION)
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        """Bind the port and serve in background threads."""
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
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
        )
        server = cast(NodeServer, self.ae.make_server(
            (self.node.host, self.node.port), evt_handlers=handlers, server_class=NodeServer, policy=policy
        ))
        thread = threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True)
        thread.start()
        self.ae._servers.append(server)
        self.server = server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop accepting; let associations in progress finish their stores (bounded wait)."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()

    def active(self) -> int:
        return len(self.ae.active_associations)

    # ---- handlers ------------------------------------------------------------------------------
    def _assoc_id(self, assoc: Any) -> str:
        with self._lock:
            ident = getattr(assoc, "_edge_ai_id", None)
            if ident is None:
                ident = f"a{next(self._ids)}"
                assoc._edge_ai_id = ident
        return str(ident)

    @staticmethod
    def _peer(assoc: Any) -> dict[str, Any]:
        fields = peer_fields(assoc)
        fields["called_ae"] = fields["called_ae"] or str(assoc.acceptor.ae_title)
        return fields

    def _transport_alert(self, event: str, **fields: Any) -> None:
        self.log.warning(event.replace(".", "_"), **{k: v for k, v in fields.items() if v is not None})
        self.audit(event, **fields)

    def _on_echo(self, event: Any) -> int:
        return status.SUCCESS

    def _on_store(self, event: Any) -> int:
        assoc_id = self._assoc_id(event.assoc)
        request = event.request
        try:
            affected = str(getattr(request, "AffectedSOPClassUID", "") or "")
            if affected not in STORAGE_CLASSES:
                raise RejectedInstance(status.SOP_CLASS_NOT_SUPPORTED, f"SOP class {affected or '(none)'} is "
                                       "not one this node stores (see docs/conformance.md)")
            stored = self.ingest.store(
                event.encoded_dataset(),
                request.DataSet.getvalue(),
                event.context.abstract_syntax,
                assoc_id,
            )
        except RejectedInstance as exc:
            self._rejected(event, exc.status, exc.reason)
            return exc.status
        except Exception as exc:  # the boundary: anything unexpected is a failure, never Success
            self.log.exception("store_failed", association=assoc_id)
            self._rejected(event, status.PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
            return status.PROCESSING_FAILURE
        ref, outcome = stored.ref, stored.outcome
        self.audit(
            "instance.stored",
            association=assoc_id,
            sop_class_uid=ref.sop_class_uid,
            sop_instance_uid=ref.sop_instance_uid,
            study_uid=ref.study_instance_uid,
            series_uid=ref.series_instance_uid,
            bytes=ref.size,
            sha256=ref.sha256,
            status=status.SUCCESS,
            duplicate=outcome.duplicate or None,
            conflict=outcome.conflict or None,
            reopened=outcome.reopened or None,
            **self._peer(event.assoc),
        )
        if outcome.conflict:
            self.audit(
                "instance.conflict",
                association=assoc_id,
                sop_instance_uid=ref.sop_instance_uid,
                sha256=ref.sha256,
                reason="same SOP Instance UID, different content: kept as a new version",
                **self._peer(event.assoc),
            )
        self.on_stored(stored)
        return status.SUCCESS

    def _rejected(self, event: Any, code: int, reason: str) -> None:
        request = event.request
        self.log.warning("instance_rejected", status=f"0x{code:04X}", reason=reason)
        self.audit(
            "instance.rejected",
            association=self._assoc_id(event.assoc),
            sop_class_uid=str(getattr(request, "AffectedSOPClassUID", "") or ""),
            sop_instance_uid=str(getattr(request, "AffectedSOPInstanceUID", "") or ""),
            status=code,
            reason=reason,
            **self._peer(event.assoc),
        )

    def _on_accepted(self, event: Any) -> None:
        refused = sorted({str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts})
        self.audit("association.accepted", association=self._assoc_id(event.assoc),
                   rejected_contexts=refused or None, **self._peer(event.assoc))

    def _on_rejected(self, event: Any) -> None:
        assoc = event.assoc
        rj = assoc.acceptor.primitive
        key = (rj.result, rj.result_source, rj.diagnostic) if rj is not None else (0, 0, 0)
        what, alert = _REJECTIONS.get(key, (f"result/source/reason {key}", False))
        reason = getattr(assoc, "_edge_ai_refusal", None) or what
        fields = {**self._peer(assoc), "result": key[0], "source": key[1], "diagnostic": key[2]}
        self.audit("association.rejected", reason=reason, **fields)
        if alert:
            # PS3.15 A.5.3.11 Security Alert, event type (DCM 110126) Node Authentication
            self._transport_alert("security.alert", alert="node_authentication", reason=reason, **fields)

    def _on_released(self, event: Any) -> None:
        assoc_id = self._assoc_id(event.assoc)
        completed = self.ingest.queue.association_released(assoc_id)
        self.audit("association.released", association=assoc_id, series_completed=completed)
        self.on_release()

    def _on_aborted(self, event: Any) -> None:
        self.audit("association.aborted", association=self._assoc_id(event.assoc), **self._peer(event.assoc))
