"""docs/conformance.md says what the node accepts and answers: its tables must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from edge_ai.config import Node, Storage, Timeouts
from edge_ai.dicom import contexts, status

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"


def _section(title: str) -> list[list[str]]:
    """Rows (cells) of the first table after the heading that starts with `title`."""
    text = DOC.read_text()
    start = text.index(f"### {title}") if f"### {title}" in text else text.index(f"## {title}")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[1:]  # without the header row


def test_sop_class_tables_match_contexts() -> None:
    """The analysed classes table and the appendix of every accepted storage class match what the node
    negotiates and analyses."""
    rows = {r[1]: r for r in _section("3.1 SOP classes")}
    assert set(rows) == {*contexts.ANALYSED, contexts.VERIFICATION}
    for uid, name in contexts.ANALYSED.items():
        assert rows[uid][0] == name and rows[uid][2] == "yes"
    every = {r[1]: r[0] for r in _section("Appendix A")}
    assert every == contexts.STORAGE_CLASSES
    assert len(every) > 150  # MR, RT, SR documents, presentation states, ... not just the analysed ones


def test_transfer_syntax_table_matches_the_nodes_preference() -> None:
    """The transfer syntaxes listed, in order, are the node's preference for every storage context."""
    rows = _section("3.2 Transfer syntaxes")
    assert [r[2] for r in rows] == contexts.TRANSFER_SYNTAXES
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
    lossy = [r[3] == "lossy" for r in rows]
    assert lossy == sorted(lossy), "a lossy syntax is preferred over a lossless one"


def test_status_table_matches_status_module() -> None:
    """Every status the SCP can answer is documented with the same meaning."""
    rows = {int(r[0], 16): r[1] for r in _section("3.3 C-STORE response statuses")}
    assert rows == status.NAMES


def test_documented_defaults_match_config() -> None:
    """The AE parameters table quotes the config defaults a fresh install runs with."""
    table = {r[0]: r[1] for r in _section("2. Application Entity")}
    node, timeouts, storage = Node(), Timeouts(), Storage()

    def default(row: str) -> int:
        match = re.search(r"default (\d+)", table[row])
        assert match, row
        return int(match.group(1))

    assert default("Maximum PDU size received") == node.max_pdu_length
    assert default("Maximum simultaneous associations") == node.max_associations
    assert default("ACSE timeout") == timeouts.acse
    assert default("DIMSE timeout") == timeouts.dimse
    assert default("Network (idle) timeout") == timeouts.network
    assert default("Socket read timeout") == timeouts.socket
    assert default("TLS handshake timeout") == timeouts.tls_handshake
    assert default("Largest decoded instance") == storage.max_instance_bytes


def test_rejection_table_matches_scp() -> None:
    """The A-ASSOCIATE-RJ (result, source, reason) triples documented are exactly the ones the SCP answers."""
    from edge_ai.dicom.transport import REJECTIONS

    triples = {tuple(int(c.split()[0]) for c in r[1:4]) for r in _section("2.1 Association acceptance")}
    assert triples == set(REJECTIONS)
