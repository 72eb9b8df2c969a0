"""Secrets of the HTTP API are files: check-config names a missing one; `edge-ai apikey` keeps only hashes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_ai", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=120, check=False)


def _config(tmp_path: Path, http: dict[str, Any]) -> Path:
    path = tmp_path / "edge-ai.yaml"
    # no models: the check stops at the HTTP secrets, which come first
    path.write_text(yaml.safe_dump({"storage": {"root": "var"}, "http": http, "models": [], "routing": []}))
    return path


@pytest.mark.parametrize("http,key", [
    ({"auth": {"hmac_key_file": "missing/apikey-hmac"}}, "http.auth.hmac_key_file"),
    ({"auth": {"jwt": {"jwks_file": "missing/jwks.json", "issuer": "i", "audience": "a"}}},
     "http.auth.jwt.jwks_file"),
    ({"tls": {"enabled": True, "certificate": "missing.crt", "private_key": "missing.key"}}, "http.tls"),
])
def test_check_config_names_a_missing_secret_file(tmp_path: Path, http: dict[str, Any], key: str) -> None:
    """An operator who forgot a secret file (or its LoadCredential=) is told which key names it, exit 2."""
    out = _cli(_config(tmp_path, http), "check-config")
    assert out.returncode == 2, out.stdout + out.stderr
    assert key in out.stderr


def test_check_config_names_an_unreadable_jwks(tmp_path: Path) -> None:
    """A JWKS file that is not JSON Web Keys is named too."""
    (tmp_path / "jwks.json").write_text("not json")
    out = _cli(_config(tmp_path, {"auth": {"jwt": {"jwks_file": "jwks.json", "issuer": "i", "audience": "a"}}}),
               "check-config")
    assert out.returncode == 2 and "http.auth.jwt.jwks_file" in out.stderr


def test_apikey_create_prints_the_key_once_and_stores_only_a_keyed_hash(tmp_path: Path) -> None:
    """The key is the last line of output, alone; the store holds a hash and a short prefix, not the key."""
    config = _config(tmp_path, {})
    out = _cli(config, "apikey", "create", "--name", "ris", "--scopes", "read,submit")
    assert out.returncode == 0, out.stderr
    key = out.stdout.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(r"eai_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", key)
    store = (tmp_path / "var" / "api-keys.json").read_text()
    entry = json.loads(store)["keys"][0]
    assert key not in store and key[12:] not in store and entry["prefix"] == key[4:12]
    assert entry["scopes"] == ["read", "submit"] and len(entry["hash"]) == 64
    assert (tmp_path / "var" / "api-keys.hmac").stat().st_mode & 0o777 == 0o600
    listed = _cli(config, "apikey", "list")
    assert listed.returncode == 0 and "ris" in listed.stdout and key not in listed.stdout
    assert "last_used=never" in listed.stdout
    assert _cli(config, "apikey", "create", "--name", "x", "--scopes", "root").returncode == 2
    assert _cli(config, "apikey", "create", "--name", "ris", "--scopes", "read").returncode == 2
    assert _cli(config, "apikey", "revoke", "ris").returncode == 0
    assert _cli(config, "apikey", "revoke", "ris").returncode == 1


def test_unit_hands_secrets_over_as_credentials_and_the_docs_show_it() -> None:
    """The shipped unit passes the key secret with LoadCredential=, where the appliance config names it."""
    unit = (REPO / "deploy" / "edge-ai.service").read_text()
    assert re.search(r"^LoadCredential=apikey-hmac:/etc/edge-ai/credentials/apikey-hmac$", unit, re.M)
    cfg = yaml.safe_load((REPO / "deploy" / "edge-ai.yaml").read_text())
    assert cfg["http"]["auth"]["hmac_key_file"] == "/run/credentials/edge-ai.service/apikey-hmac"
    assert "LoadCredential=" in (REPO / "docs" / "install.md").read_text()
