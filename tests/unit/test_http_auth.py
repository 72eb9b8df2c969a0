"""API keys and the failed-authentication brake (edge_ai.http.auth), without a server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_ai.errors import ConfigError
from edge_ai.http.auth import ApiKeys, Authenticator, AuthFailed, Throttle, read_secret


def _keys(tmp_path: Path) -> ApiKeys:
    return ApiKeys(tmp_path / "api-keys.json", read_secret(tmp_path / "secret", create=True))


def test_a_created_key_works_until_revoked_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    """A key authenticates with its scopes; revoking it (even from another process) ends that at once."""
    store = _keys(tmp_path)
    key = store.create("ris", ["read"])
    daemon = _keys(tmp_path)  # the node's own instance, reading the same files
    principal = daemon.verify(key)
    assert principal.name == "ris" and principal.scopes == {"read"} and principal.kind == "api_key"
    assert key not in (tmp_path / "api-keys.json").read_text()
    time.sleep(0.01)
    assert store.revoke("ris")
    with pytest.raises(AuthFailed):
        daemon.verify(key)


@pytest.mark.parametrize("mutate", [lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"), lambda k: k[:12] + "_x",
                                    lambda k: "eai_ffffffff" + k[12:], lambda k: k + "x", lambda k: ""])
def test_anything_but_the_exact_key_fails(tmp_path: Path, mutate: object) -> None:
    """A key with one character changed, cut, extended, or with another prefix is refused."""
    store = _keys(tmp_path)
    key = store.create("ris", ["read"])
    with pytest.raises(AuthFailed):
        Authenticator(store, None).authenticate(f"Bearer {mutate(key)}")  # type: ignore[operator]


def test_the_same_key_under_another_server_secret_fails(tmp_path: Path) -> None:
    """The stored hash is keyed: a copied key store is useless with another node's secret."""
    key = _keys(tmp_path).create("ris", ["read"])
    (tmp_path / "other").mkdir()
    other = ApiKeys(tmp_path / "api-keys.json", read_secret(tmp_path / "other" / "secret", create=True))
    with pytest.raises(AuthFailed):
        other.verify(key)


def test_last_used_is_recorded_without_touching_the_key_store(tmp_path: Path) -> None:
    """Using a key records when, beside the store, so `apikey list` shows it; the store file is unchanged."""
    store = _keys(tmp_path)
    key = store.create("ris", ["read"])
    before = (tmp_path / "api-keys.json").read_bytes()
    store.verify(key)
    store.flush()
    assert (tmp_path / "api-keys.json").read_bytes() == before
    assert store.list()[0]["last_used"] == pytest.approx(time.time(), abs=10)
    assert json.loads(store.last_used_path.read_text()).keys() == {"ris"}


def test_a_missing_named_secret_is_a_config_error(tmp_path: Path) -> None:
    """A secret file named in the config but absent is not made up: the error names the key."""
    with pytest.raises(ConfigError, match=r"http\.auth\.hmac_key_file"):
        read_secret(tmp_path / "absent", create=False)


def test_the_brake_holds_one_peer_and_not_the_others() -> None:
    """Past the limit one address waits for the window to pass; another address is not affected."""
    brake = Throttle(limit=3, window_s=0.3)
    for _ in range(3):
        assert brake.retry_after("10.0.0.1") == 0
        brake.failed("10.0.0.1")
    assert 0 < brake.retry_after("10.0.0.1") <= 0.3
    assert brake.retry_after("10.0.0.2") == 0
    time.sleep(0.35)
    assert brake.retry_after("10.0.0.1") == 0
