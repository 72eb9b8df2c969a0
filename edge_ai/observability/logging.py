"""structlog set-up: pretty on a terminal, JSON lines otherwise (systemd captures stdout)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# Keys that might carry patient identity are dropped before rendering, whatever a caller passes.
_PHI_KEYS = frozenset({"patient_name", "PatientName", "patient_birth_date", "PatientBirthDate"})


def _drop_phi(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in _PHI_KEYS & event.keys():
        event[key] = "[removed]"
    return event


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_phi,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs through stdlib logging, with patient-free but chatty messages: warnings only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def get(name: str) -> Any:
    return structlog.get_logger(name)
