"""The node's audit trail, built from `audit:` in the config: key, log, seal record, ATNA sender.

One object so the composition root wires one thing: `record` is what every component calls, and
`start`/`close` order the pieces (the log seals at close before the sender sends its last lines).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_ai.config import Config, DicomDestination, FolderDestination
from edge_ai.errors import ConfigError
from edge_ai.observability.atna import Context
from edge_ai.observability.atna_sender import AtnaSender
from edge_ai.observability.audit import AuditLog
from edge_ai.observability.audit_seals import SealStore, load_key
from edge_ai.observability.audit_verify import VerifyResult, verify


def seals_path(cfg: Config) -> Path:
    return cfg.storage.root / "audit" / "seals.sqlite3"


class AuditTrail:
    def __init__(self, cfg: Config, log: Any, on_lag: Callable[[int, float | None], None] = lambda n, a: None) -> None:
        self.cfg, self.log = cfg, log
        a = cfg.audit
        self.key = load_key(a.seal_key_file, cfg.storage.root)
        self.store = SealStore(seals_path(cfg))
        self.sender: AtnaSender | None = None
        self.log_file = AuditLog(
            cfg.audit_path, a.fsync_interval_ms / 1000, key=self.key, seal_every=a.seal_every, seals=self.store,
            on_seal=self._sealed, segment_bytes=a.segment_bytes, retention_days=a.retention_days,
            on_append=self._appended)
        if a.atna is not None:
            try:
                self.sender = AtnaSender(a.atna, cfg.audit_path, self.store, _context(cfg),
                                         lambda: self.log_file.head[0], log, on_lag)
            except (OSError, ssl.SSLError) as exc:
                self.log_file.close()
                raise ConfigError(f"audit.atna.tls: cannot load: {exc}") from exc

    def record(self, event: str, **fields: Any) -> None:
        self.log_file.record(event, **fields)

    def _appended(self) -> None:
        if self.sender is not None:
            self.sender.wake()

    def _sealed(self, seq: int, digest: str) -> None:
        # the journal's copy of the newest seal (SPEC: recorded outside the log)
        self.log.info("audit_sealed", seq=seq, hash=digest)

    def start(self) -> VerifyResult:
        """Check the log from its newest seal (fast); a failure is audited as a security alert."""
        result = verify(self.cfg.audit_path, self.key, self.store, fast=True)
        if not result.ok:
            self.log.error("audit_verify_failed", segment=result.segment, line=result.bad_line, reason=result.reason)
            self.record("audit.verify_failed", path=str(self.cfg.audit_path), segment=result.segment or None,
                        line=result.bad_line, reason=result.reason)
        if self.sender is not None:
            self.sender.start()
        return result

    def check(self) -> VerifyResult:
        """A fast verify of the live log (the dashboard's), with appends held for its few milliseconds."""
        with self.log_file.quiet():
            return verify(self.cfg.audit_path, self.key, self.store, fast=True)

    def close(self) -> None:
        self.log_file.close()
        if self.sender is not None:
            self.sender.stop()
        self.store.close()


def _context(cfg: Config) -> Context:
    dests: dict[str, tuple[str, str]] = {}
    for d in cfg.destinations or []:
        if isinstance(d, DicomDestination):
            dests[d.name] = (d.ae_title, f"{d.host}:{d.port}")
        elif isinstance(d, FolderDestination):
            dests[d.name] = (f"file://{d.path}", "")
    return Context(cfg.node.ae_title, socket.gethostname(), dests)
