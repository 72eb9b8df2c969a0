"""edge_ai.config: the shipped file, validation messages that name the key, defaults, paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_ai import config
from edge_ai.config import DicomDestination, FolderDestination
from edge_ai.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "edge-ai.yaml"


def write(tmp_path: Path, doc: dict[str, Any], name: str = "edge-ai.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def load_error(tmp_path: Path, doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, doc))
    return str(info.value)


PACS = {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "10.1.2.3", "port": 104}


def test_shipped_config_loads_with_safe_defaults() -> None:
    """The config that ships listens on loopback as EDGE_AI:11112 and writes results under var/."""
    cfg = config.load(SHIPPED)
    assert cfg.node.host == "127.0.0.1"
    assert cfg.node.port == 11112
    assert cfg.node.ae_title == "EDGE_AI"
    assert cfg.node.tls.enabled is False
    assert cfg.storage.root == REPO / "var"
    assert cfg.audit.path == REPO / "var" / "audit" / "audit.jsonl"
    assert cfg.destinations is not None and len(cfg.destinations) == 1
    dest = cfg.destinations[0]
    assert isinstance(dest, FolderDestination)
    assert dest.path == REPO / "var" / "results"
    assert cfg.models is not None
    demo = [config.MODELS_DIR / "demo_chest_xr", config.MODELS_DIR / "demo_ct"]
    assert [m.path for m in cfg.models] == demo
    assert cfg.routing is not None
    assert {r.model for r in cfg.routing} == {"demo-chest-xr", "demo-ct-lesion"}
    assert cfg.source == SHIPPED
    assert len(cfg.sha256) == 64


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"node": {"bogus": 1}}, "node.bogus"),
        ({"bogus": 1}, "bogus"),
        ({"node": {"timeouts": {"acse": 30, "bogus": 1}}}, "node.timeouts.bogus"),
        ({"node": {"tls": {"enabled": False, "bogus": 1}}}, "node.tls.bogus"),
        ({"node": {"allowed_callers": [{"ae_title": "CT1", "bogus": 1}]}}, "node.allowed_callers.0.bogus"),
        ({"storage": {"bogus": 1}}, "storage.bogus"),
        ({"models": [{"path": "m", "bogus": 1}]}, "models.0.bogus"),
        ({"routing": [{"name": "r", "match": {"Bogus": ["x"]}, "model": "m"}]}, "routing.0.match.Bogus"),
        ({"destinations": [{"name": "r", "type": "folder", "path": "x", "bogus": 1}]},
         "destinations.0.bogus"),
        ({"destinations": [{**PACS, "tls": {"bogus": 1}}]}, "destinations.0.tls.bogus"),
        ({"audit": {"path": "a", "bogus": 1}}, "audit.bogus"),
        ({"drift": {"bogus": 1}}, "drift.bogus"),
    ],
)
def test_unknown_key_is_rejected_naming_the_dotted_key(tmp_path: Path, doc: dict[str, Any], key: str) -> None:
    """A typo anywhere in the file is an error that names the key as the user wrote it."""
    message = load_error(tmp_path, doc)
    assert f"{key}: unknown key" in message


@pytest.mark.parametrize("title", ["A\\B", "    ", "X" * 17, ""])
def test_bad_node_ae_title_is_rejected(tmp_path: Path, title: str) -> None:
    """An AE title DICOM would not allow is refused at load, naming node.ae_title."""
    assert "node.ae_title" in load_error(tmp_path, {"node": {"ae_title": title}})


def test_bad_caller_ae_title_is_rejected(tmp_path: Path) -> None:
    """An allowed caller with an impossible AE title is refused, naming the list entry."""
    message = load_error(tmp_path, {"node": {"allowed_callers": [{"ae_title": "CT\\1"}]}})
    assert "node.allowed_callers.0.ae_title" in message


def test_bad_destination_calling_ae_title_is_rejected(tmp_path: Path) -> None:
    """A destination's calling AE title follows the same AE rules as the node's own."""
    message = load_error(tmp_path, {"destinations": [{**PACS, "calling_ae_title": "EDGE\\AI"}]})
    assert "destinations.0.calling_ae_title" in message


def test_ae_title_surrounding_spaces_are_trimmed(tmp_path: Path) -> None:
    """Padding spaces around an AE title do not become part of the title the node answers to."""
    cfg = config.load(write(tmp_path, {"node": {"ae_title": " EDGE "}}))
    assert cfg.node.ae_title == "EDGE"


def test_bad_cidr_is_rejected(tmp_path: Path) -> None:
    """An allowed-callers network that is not an IP or CIDR is refused, quoting it."""
    doc = {"node": {"allowed_callers": [{"ae_title": "CT1", "hosts": ["10.1.2.0/33"]}]}}
    message = load_error(tmp_path, doc)
    assert "node.allowed_callers.0.hosts" in message
    assert "10.1.2.0/33" in message


@pytest.mark.parametrize("port", [0, 65536, -1, "abc"])
def test_bad_node_port_is_rejected(tmp_path: Path, port: object) -> None:
    """A port outside 1-65535 is refused, naming node.port."""
    assert "node.port" in load_error(tmp_path, {"node": {"port": port}})


def test_bad_destination_port_is_rejected(tmp_path: Path) -> None:
    """A DICOM destination's port is checked too."""
    assert "destinations.0.port" in load_error(tmp_path, {"destinations": [{**PACS, "port": 70000}]})


def test_tls_enabled_without_certificate_is_rejected(tmp_path: Path) -> None:
    """Turning TLS on without a certificate and key is an error, not a silent plain listener."""
    message = load_error(tmp_path, {"node": {"tls": {"enabled": True}}})
    assert "node.tls" in message
    assert "certificate" in message


def test_duplicate_destination_names_are_rejected(tmp_path: Path) -> None:
    """Two destinations with one name would make routing ambiguous: refused."""
    doc = {"destinations": [{**PACS}, {"name": "pacs", "type": "folder", "path": "out"}]}
    message = load_error(tmp_path, doc)
    assert "destinations" in message
    assert "unique" in message


def test_route_naming_unknown_destination_is_rejected(tmp_path: Path) -> None:
    """A routing rule that sends to a destination nobody configured is refused, naming the rule."""
    doc = {
        "destinations": [{**PACS}],
        "routing": [{"name": "ct", "match": {"Modality": ["CT"]}, "model": "m", "destinations": ["archive"]}],
    }
    message = load_error(tmp_path, doc)
    assert "routing.0.destinations" in message
    assert "archive" in message


def test_route_naming_unknown_destination_is_rejected_with_default_destinations(tmp_path: Path) -> None:
    """With the destinations section left out only 'results' exists; a rule naming another is refused."""
    doc = {"routing": [{"name": "ct", "match": {"Modality": ["CT"]}, "model": "m", "destinations": ["pacs"]}]}
    message = load_error(tmp_path, doc)
    assert "routing.0.destinations" in message
    assert "pacs" in message


def test_route_naming_default_destination_is_accepted(tmp_path: Path) -> None:
    """A rule may name the embedded default 'results' destination without declaring it."""
    rule = {"name": "ct", "match": {"Modality": ["CT"]}, "model": "m", "destinations": ["results"]}
    doc = {"routing": [rule]}
    cfg = config.load(write(tmp_path, doc))
    assert cfg.routing is not None and cfg.routing[0].destinations == ["results"]


def test_bad_series_description_regex_is_rejected(tmp_path: Path) -> None:
    """A routing regular expression that does not compile is refused at load, not at the first series."""
    doc = {"routing": [{"name": "r", "match": {"SeriesDescription": "(chest"}, "model": "m"}]}
    assert "routing.0.match.SeriesDescription" in load_error(tmp_path, doc)


def test_unreadable_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file, broken YAML or a non-mapping top level give a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("node: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(tmp_path / "list.yaml")


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths mean 'next to the config file', whatever the working directory is."""
    monkeypatch.chdir(tmp_path)
    etc = tmp_path / "etc" / "edge"
    doc = {
        "node": {"tls": {"enabled": True, "certificate": "tls/node.crt", "private_key": "tls/node.key"}},
        "storage": {"root": "../spool"},
        "models": [{"path": "models/mine"}],
        "destinations": [
            {"name": "out", "type": "folder", "path": "results"},
            {**PACS, "tls": {"enabled": True, "certificate": "c.pem", "private_key": "k.pem",
                             "ca_certificates": "/abs/ca.pem"}},
        ],
        "audit": {"path": "audit/log.jsonl"},
    }
    cfg = config.load(write(etc, doc))
    assert cfg.node.tls.certificate == etc / "tls" / "node.crt"
    assert cfg.node.tls.private_key == etc / "tls" / "node.key"
    assert cfg.storage.root == tmp_path / "etc" / "spool"
    assert cfg.models is not None and cfg.models[0].path == etc / "models" / "mine"
    assert cfg.destinations is not None
    folder, dicom = cfg.destinations
    assert isinstance(folder, FolderDestination) and folder.path == etc / "results"
    assert isinstance(dicom, DicomDestination)
    assert dicom.tls.certificate == etc / "c.pem"
    assert dicom.tls.ca_certificates == Path("/abs/ca.pem")
    assert cfg.audit.path == etc / "audit" / "log.jsonl"


def test_missing_sections_take_the_documented_defaults(tmp_path: Path) -> None:
    """An empty file runs the demo models, their routing, and writes results under storage.root."""
    cfg = config.load(write(tmp_path / "conf", {}))
    assert cfg.storage.root == tmp_path / "var"
    assert cfg.node.port == 11112 and cfg.node.ae_title == "EDGE_AI"
    assert cfg.models is not None
    assert [m.path for m in cfg.models] == [m.path for m in config.default_models()]
    assert cfg.routing == config.default_routing()
    assert cfg.destinations is not None and len(cfg.destinations) == 1
    dest = cfg.destinations[0]
    assert isinstance(dest, FolderDestination)
    assert dest.name == "results"
    assert dest.path == tmp_path / "var" / "results"


def test_default_results_folder_follows_a_configured_storage_root(tmp_path: Path) -> None:
    """Moving storage.root moves the default results folder with it."""
    cfg = config.load(write(tmp_path, {"storage": {"root": "/data/edge"}}))
    assert cfg.destinations is not None
    dest = cfg.destinations[0]
    assert isinstance(dest, FolderDestination) and dest.path == Path("/data/edge/results")


def test_resolve_path_prefers_flag_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins over $EDGE_AI_CONFIG, which wins over config/edge-ai.yaml."""
    monkeypatch.setenv("EDGE_AI_CONFIG", "/etc/edge-ai/from-env.yaml")
    assert config.resolve_path(Path("/srv/flag.yaml")) == Path("/srv/flag.yaml")
    assert config.resolve_path(None) == Path("/etc/edge-ai/from-env.yaml")
    monkeypatch.delenv("EDGE_AI_CONFIG")
    assert config.resolve_path(None) == Path("config/edge-ai.yaml")
    monkeypatch.setenv("EDGE_AI_CONFIG", "")
    assert config.resolve_path(None) == Path("config/edge-ai.yaml")


def test_config_hash_changes_with_the_file(tmp_path: Path) -> None:
    """The audited config hash tells two different files apart."""
    first = config.load(write(tmp_path, {"node": {"port": 11112}}, "a.yaml")).sha256
    second = config.load(write(tmp_path, {"node": {"port": 11113}}, "b.yaml")).sha256
    assert first != second
