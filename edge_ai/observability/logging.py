"""structlog set-up: journald fields under systemd, JSON lines when piped, pretty on a terminal.

Under systemd, $JOURNAL_STREAM names the device:inode of the stream the journal reads; when it
matches our stderr (and systemd-python is importable) every event goes to journald as structured
fields (MESSAGE, PRIORITY, SYSLOG_IDENTIFIER=edge-ai, EVENT, and each key/value uppercased), so
`journalctl -u edge-ai EVENT=delivery_dead_letter` works. Otherwise one JSON object per line.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

SYSLOG_IDENTIFIER = "edge-ai"
# Keys that might carry patient identity are dropped before rendering, whatever a caller passes.
_PHI_KEYS = frozenset({"patient_name", "PatientName", "patient_birth_date", "PatientBirthDate"})
_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}
# Fields journald sets or interprets itself: ours are prefixed rather than overriding them.
_RESERVED = frozenset(
    {
        "MESSAGE",
        "PRIORITY",
        "SYSLOG_IDENTIFIER",
        "MESSAGE_ID",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "SYSLOG_FACILITY",
        "SYSLOG_PID",
        "ERRNO",
        "EVENT",
        "LOGGER",
    }
)
_FIELD_RE = re.compile(r"[^A-Z0-9_]")

JournalSend = Callable[..., Any]


def _drop_phi(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _PHI_KEYS & event.keys():
        event[key] = "[removed]"
    return event


def journal_field(key: str) -> str:
    """A structlog key as a journald field name: uppercase A-Z0-9_, not starting with _ or a digit."""
    name = _FIELD_RE.sub("_", key.upper()).lstrip("_")[:64] or "FIELD"
    if name[0].isdigit() or name in _RESERVED:
        name = f"EDGE_AI_{name}"
    return name


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | tuple):
        return jsonlib.dumps(value, default=str, separators=(",", ":"))
    return str(value)


class JournalRenderer:
    """Last structlog processor: sends the event to journald, then drops it from the stream."""

    def __init__(self, send: JournalSend) -> None:
        self._send = send

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        fields = dict(event)
        name = str(fields.pop("event", ""))
        level = str(fields.pop("level", "info"))
        fields.pop("timestamp", None)  # journald stamps every entry itself
        exc = fields.pop("exception", None)
        logger = fields.pop("logger", None)
        text = " ".join([name, *(f"{k}={_value(v)}" for k, v in fields.items())])
        extra = {journal_field(k): _value(v) for k, v in fields.items() if v is not None}
        if exc:
            text = f"{text}\n{exc}"
        if logger:
            extra["LOGGER"] = str(logger)
        self._send(
            text,
            PRIORITY=str(_PRIORITY.get(level, 6)),
            SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
            EVENT=name,
            **extra,
        )
        raise structlog.DropEvent


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when $JOURNAL_STREAM (device:inode) names this stream's file."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def _journal_send() -> JournalSend | None:
    try:
        from systemd import journal  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    send: JournalSend = journal.send
    return send


def choose_mode(
    stream: TextIO, environ: Mapping[str, str] | None = None, *, journal_available: bool = True
) -> str:
    """'journal', 'json' or 'console' for this stream."""
    if stream_is_journal(stream, environ):
        return "journal" if journal_available else "json"
    return "console" if stream.isatty() else "json"


def configure(
    level: str = "INFO",
    *,
    json: bool | None = None,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    journal_send: JournalSend | None = None,
) -> str:
    """Configure structlog (and stdlib logging for pynetdicom); returns the mode chosen.

    Args:
        json: True/False forces JSON lines / pretty output; None detects (journal, TTY, pipe).
        journal_send: systemd.journal.send or a stand-in (tests); None imports it if present.
    """
    out = sys.stderr if stream is None else stream
    send = journal_send if journal_send is not None else _journal_send()
    if json is None:
        mode = choose_mode(out, environ, journal_available=send is not None)
    else:
        mode = "json" if json else "console"
    renderer: Any
    if mode == "journal":
        assert send is not None
        renderer = JournalRenderer(send)
    elif mode == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()
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
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs through stdlib logging, with patient-free but chatty messages: warnings only.
    handler: logging.Handler = logging.StreamHandler(out)
    if mode == "journal":
        handler = _stdlib_journal_handler() or handler
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    return mode


def _stdlib_journal_handler() -> logging.Handler | None:
    try:
        from systemd import journal
    except ImportError:
        return None
    handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    return handler


def get(name: str) -> Any:
    return structlog.get_logger(name)
