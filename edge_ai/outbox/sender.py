"""Outbox: delivers each SR to each destination, with capped exponential backoff and dead letters."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

from edge_ai.config import DicomDestination, FolderDestination, RetryPolicy
from edge_ai.dicom import scu
from edge_ai.domain import strict_uid
from edge_ai.errors import PermanentError, TransientError
from edge_ai.outbox.deliveries import Deliveries, Delivery
from edge_ai.spool.store import write_durably

Destination = FolderDestination | DicomDestination


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): doubling, capped, +-20 % jitter."""
    base = min(policy.max_s, policy.initial_s * (2 ** (attempt - 1)))
    jitter = (rng or random).uniform(0.8, 1.2)
    return float(min(policy.max_s, base * jitter))


def deliver_to_folder(dest: FolderDestination, source: Path) -> None:
    """Copy durably to <path>/<Study UID>/<SR SOP Instance UID>.dcm.

    The SR's SOP Instance UID is edge_ai's own (digits and dots). The Study Instance UID is the
    sender's: it names the folder only when it is a UID as PS3.5 writes them, else its hash does (a
    peer's lenient UID never becomes part of a path). Being deterministic, a resend overwrites the
    same file.
    """
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
        study = str(ds.StudyInstanceUID)
        folder = study if strict_uid(study) else hashlib.sha256(study.encode()).hexdigest()[:40]
        target = dest.path / folder / f"{ds.SOPInstanceUID}.dcm"
        tmp = dest.path / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as f:
            write_durably(target, f.read(), tmp)
    except FileNotFoundError as exc:
        raise PermanentError(f"SR file missing from the spool: {exc.filename}") from exc
    except OSError as exc:
        raise TransientError(f"cannot write to {dest.path}: {exc.strerror}") from exc


class Outbox:
    def __init__(
        self,
        deliveries: Deliveries,
        destinations: list[Destination],
        calling_ae: str,
        audit: Callable[..., None],
        log: Any,
        on_delivered: Callable[[Delivery, float], None] = lambda d, t: None,
    ) -> None:
        self.deliveries = deliveries
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae = calling_ae
        self.audit = audit
        self.log = log
        self.on_delivered = on_delivered
        self.associations = scu.Associations()  # kept open a moment after each SR (outbox thread only)

    def run_due(self) -> int:
        """Attempt every delivery that is due; returns how many were attempted."""
        due = self.deliveries.due()
        for delivery in due:
            self.attempt(delivery)
        return len(due)

    def attempt(self, delivery: Delivery) -> None:
        dest = self.destinations.get(delivery.destination)
        attempt_no = delivery.attempts + 1
        if dest is None:
            self._dead(delivery, attempt_no, "destination no longer configured")
            return
        started = time.monotonic()
        try:
            if isinstance(dest, FolderDestination):
                deliver_to_folder(dest, Path(delivery.path))
                code = 0
            else:
                code = self.associations.send(dest, Path(delivery.path), self.calling_ae)
        except PermanentError as exc:
            self._dead(delivery, attempt_no, str(exc))
            return
        except TransientError as exc:
            self._retry(delivery, attempt_no, dest.retry, str(exc))
            return
        except Exception as exc:  # the boundary: unexpected errors are retried, then dead-lettered
            self.log.exception("delivery_error", destination=dest.name)
            self._retry(delivery, attempt_no, dest.retry, f"internal error: {type(exc).__name__}: {exc}")
            return
        self.deliveries.done(delivery)
        self.audit(
            "delivery.attempt", destination=dest.name, sr_sop_instance_uid=delivery.sop_instance_uid,
            attempt=attempt_no, outcome="delivered", status=code,
        )
        self.log.info("delivered", destination=dest.name, sr=delivery.sop_instance_uid, attempt=attempt_no)
        self.on_delivered(delivery, time.monotonic() - started)

    def _retry(self, delivery: Delivery, attempt_no: int, policy: RetryPolicy, reason: str) -> None:
        if attempt_no >= policy.attempts:
            self._dead(delivery, attempt_no, f"gave up after {attempt_no} attempts: {reason}")
            return
        wait = backoff(policy, attempt_no)
        self.deliveries.retry(delivery, reason, time.time() + wait)
        self.audit(
            "delivery.attempt", destination=delivery.destination, sr_sop_instance_uid=delivery.sop_instance_uid,
            attempt=attempt_no, outcome="retry", reason=reason, retry_in_s=round(wait, 2),
        )
        self.log.warning("delivery_retry", destination=delivery.destination, reason=reason, retry_in_s=round(wait, 2))

    def _dead(self, delivery: Delivery, attempt_no: int, reason: str) -> None:
        self.deliveries.dead(delivery, reason)
        self.audit(
            "delivery.attempt", destination=delivery.destination, sr_sop_instance_uid=delivery.sop_instance_uid,
            attempt=attempt_no, outcome="dead_letter", reason=reason,
        )
        self.log.error("delivery_dead_letter", destination=delivery.destination, reason=reason)
