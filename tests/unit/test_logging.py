"""Log output: journald fields under systemd, JSON lines when piped, pretty on a terminal, no PHI."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from edge_ai.observability import logging as obs_logging


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level


def _journal_env(path: Path) -> dict[str, str]:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_stream_gets_structured_fields(tmp_path: Path) -> None:
    """Under systemd each event reaches journald with PRIORITY, SYSLOG_IDENTIFIER and uppercased keys."""
    sent: list[tuple[str, dict[str, Any]]] = []
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        mode = obs_logging.configure(
            stream=stream, environ=_journal_env(path), journal_send=lambda msg, **kw: sent.append((msg, kw))
        )
        obs_logging.get("edge_ai").warning(
            "delivery_retry", destination="pacs", retry_in_s=2.5, patient_name="DOE^JANE"
        )
    assert mode == "journal"
    assert path.read_text() == ""  # nothing duplicated on the stream itself
    message, fields = sent[0]
    assert message.startswith("delivery_retry destination=pacs")
    assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "edge-ai"
    assert fields["EVENT"] == "delivery_retry"
    assert fields["DESTINATION"] == "pacs" and fields["RETRY_IN_S"] == "2.5"
    assert fields["PATIENT_NAME"] == "[removed]" and "DOE" not in message


def test_journal_stream_without_systemd_python_falls_back_to_json(tmp_path: Path) -> None:
    """When stderr is the journal but systemd-python is missing, the journal still gets JSON lines."""
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        assert obs_logging.choose_mode(stream, _journal_env(path), journal_available=False) == "json"


def test_pipe_gets_json_lines() -> None:
    """Piped output (not a terminal, not the journal) is one JSON object per line."""
    out = io.StringIO()
    mode = obs_logging.configure(stream=out, environ={}, journal_send=lambda *a, **k: None)
    obs_logging.get("edge_ai").info("node_ready", port=11112)
    assert mode == "json"
    line = json.loads(out.getvalue().splitlines()[0])
    assert line["event"] == "node_ready" and line["port"] == 11112 and line["level"] == "info"


def test_other_journal_stream_is_not_ours(tmp_path: Path) -> None:
    """A JOURNAL_STREAM inherited for another file descriptor does not switch to journald."""
    other = tmp_path / "other"
    other.write_text("")
    with (tmp_path / "stderr").open("w") as stream:
        assert obs_logging.choose_mode(stream, _journal_env(other)) == "json"
        assert obs_logging.choose_mode(stream, {"JOURNAL_STREAM": "garbage"}) == "json"


def test_terminal_gets_pretty_output() -> None:
    """On a terminal the console renderer is used."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert obs_logging.choose_mode(Tty(), {}) == "console"


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("sr", "SR"),
        ("retry-in", "RETRY_IN"),
        ("message", "EDGE_AI_MESSAGE"),
        ("_private", "PRIVATE"),
        ("1st", "EDGE_AI_1ST"),
    ],
)
def test_journal_field_names_are_valid(key: str, field: str) -> None:
    """Keys become valid journald field names and never override journald's own fields."""
    assert obs_logging.journal_field(key) == field


def test_real_journal_send_where_available(tmp_path: Path) -> None:
    """With systemd-python installed, the journal mode picks the real journal.send."""
    pytest.importorskip("systemd.journal")
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        assert obs_logging.configure(stream=stream, environ=_journal_env(path)) == "journal"
