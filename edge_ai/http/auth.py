"""Who is calling: API keys (keyed hashes in a file) and OAuth 2.0 access tokens (JWTs checked offline
against a JWKS file), scopes, and a per-peer brake on failed attempts.

An API key is `eai_<8 hex public prefix>_<43 url-safe secret chars>`; the store keeps its name, prefix,
scopes, creation time and HMAC-SHA256 under a server secret (`http.auth.hmac_key_file`), never the key.
A presented key is found by its prefix and compared with `hmac.compare_digest`. The daemon only reads the
store (it re-reads it when the file changes, so `edge-ai apikey create|revoke` take effect at once);
last-used times go to a file of their own beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from edge_ai.config import Jwt
from edge_ai.errors import ConfigError

SCOPES = ("submit", "read", "feedback", "admin")
# fixed in code: asymmetric only; never "none", never HS* (a public key must not double as an HMAC secret)
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_PREFIX = "eai_"
_LAST_USED_EVERY_S = 60.0
_LEEWAY_S = 30


@dataclass(frozen=True)
class Principal:
    name: str  # key name, or the token's subject
    scopes: frozenset[str]
    kind: str  # api_key | jwt


class AuthFailed(Exception):
    """Credentials missing or not valid; the message is for the audit, never contains the credential."""


def read_secret(path: Path, create: bool) -> bytes:
    """The server secret the key hashes are keyed with; made (0600) when `create` and it does not exist.

    Raises:
        ConfigError: naming the file when it is missing (and not to be made), unreadable or empty.
    """
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
                os.fsync(fd)
                _owned_like_folder(fd, path)
            finally:
                os.close(fd)
    try:
        value = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"http.auth.hmac_key_file: cannot read {path}: {exc.strerror}") from exc
    if len(value) < 16:
        raise ConfigError(f"http.auth.hmac_key_file: {path} holds no usable secret (under 16 bytes)")
    return value


def _owned_like_folder(fd: int, path: Path) -> None:
    """Run as root (`sudo edge-ai apikey ...`), a file made stays the service user's, as its folder is."""
    if os.geteuid() == 0:
        folder = path.parent.stat()
        os.fchown(fd, folder.st_uid, folder.st_gid)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
        _owned_like_folder(fd, path)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class ApiKeys:
    """The key store file (hashes only) and the last-used file beside it."""

    def __init__(self, store: Path, secret: bytes) -> None:
        self.store = store
        self.last_used_path = store.with_name(store.stem + ".last-used.json")
        self._secret = secret
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_prefix: dict[str, dict[str, Any]] = {}
        self._last_used: dict[str, float] = {}
        self._last_written = 0.0

    def _digest(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    def _read(self) -> list[dict[str, Any]]:
        try:
            doc = json.loads(self.store.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"http.auth.api_keys: cannot read {self.store}: {exc}") from exc
        keys = doc.get("keys", []) if isinstance(doc, dict) else []
        return [k for k in keys if isinstance(k, dict)]

    def _write(self, keys: list[dict[str, Any]]) -> None:
        _atomic_write(self.store, json.dumps({"version": 1, "keys": keys}, indent=2) + "\n")

    # ---- the command line ------------------------------------------------------------------------
    def create(self, name: str, scopes: list[str]) -> str:
        """A new key with these scopes; returns the key (shown once, kept nowhere)."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})")
        keys = self._read()
        if any(k.get("name") == name for k in keys):
            raise ValueError(f"a key named {name!r} exists already (revoke it first)")
        prefix = secrets.token_hex(4)
        key = f"{_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        keys.append({"name": name, "prefix": prefix, "hash": self._digest(key), "scopes": sorted(set(scopes)),
                     "created": time.time()})
        self._write(keys)
        return key

    def revoke(self, name: str) -> bool:
        keys = self._read()
        kept = [k for k in keys if k.get("name") != name]
        if len(kept) == len(keys):
            return False
        self._write(kept)
        return True

    def list(self) -> list[dict[str, Any]]:
        """name, prefix, scopes, created, last_used (None: never) of each key; never the key or its hash."""
        try:
            used = json.loads(self.last_used_path.read_text())
        except (OSError, ValueError):
            used = {}
        return [{"name": k.get("name"), "prefix": k.get("prefix"), "scopes": k.get("scopes", []),
                 "created": k.get("created"), "last_used": used.get(k.get("name")) if isinstance(used, dict)
                 else None} for k in self._read()]

    # ---- the daemon ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        try:
            st = self.store.stat()
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._by_prefix = {str(k.get("prefix")): k for k in self._read()} if stamp else {}
            self._stamp = stamp

    def verify(self, key: str) -> Principal:
        """Raises: AuthFailed when the key is not one of the store's (or malformed)."""
        if not key.startswith(_PREFIX) or len(key) < 20 or key[12] != "_":
            raise AuthFailed("not an API key")
        with self._lock:
            self._refresh()
            entry = self._by_prefix.get(key[4:12])
        expected = str(entry.get("hash", "")) if entry else self._digest("")
        if not hmac.compare_digest(self._digest(key), expected) or entry is None:
            raise AuthFailed("unknown or revoked API key")
        name = str(entry.get("name"))
        self._used(name)
        return Principal(name, frozenset(entry.get("scopes", [])), "api_key")

    def holds(self, name: str, prefix: str) -> bool:
        """Whether the key named `name` with this public prefix is still in the store (not revoked)."""
        with self._lock:
            self._refresh()
            entry = self._by_prefix.get(prefix)
        return entry is not None and entry.get("name") == name

    def _used(self, name: str) -> None:
        now = time.time()
        with self._lock:
            self._last_used[name] = now
            if now - self._last_written < _LAST_USED_EVERY_S:
                return
            self._last_written = now
            snapshot = dict(self._last_used)
        self.flush(snapshot)

    def flush(self, snapshot: dict[str, float] | None = None) -> None:
        """Write last-used times (at most once a minute while serving, and at stop)."""
        if snapshot is None:
            with self._lock:
                snapshot = dict(self._last_used)
        if not snapshot:
            return
        try:
            old = json.loads(self.last_used_path.read_text())
        except (OSError, ValueError):
            old = {}
        merged = {**(old if isinstance(old, dict) else {}), **snapshot}
        with contextlib.suppress(OSError):  # a bookkeeping write never fails a request
            _atomic_write(self.last_used_path, json.dumps(merged))


class JwtVerifier:
    """OAuth 2.0 access tokens as JWTs: signature against the JWKS file, exp, nbf, iss, aud; scopes from
    `scope` (space-separated) or `scp` (list or string)."""

    def __init__(self, cfg: Jwt) -> None:
        self.cfg = cfg
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        """Raises: ConfigError naming http.auth.jwt.jwks_file when it cannot be read or holds no key."""
        path = self.cfg.jwks_file
        try:
            st = path.stat()
            if (st.st_mtime_ns, st.st_size) == self._stamp:
                return
            keyset = jwt.PyJWKSet.from_json(path.read_text())
        except OSError as exc:
            raise ConfigError(f"http.auth.jwt.jwks_file: cannot read {path}: {exc.strerror}") from exc
        except (jwt.PyJWTError, ValueError) as exc:
            raise ConfigError(f"http.auth.jwt.jwks_file: {path} is not a usable JWKS: {exc}") from exc
        self._keys = {k.key_id: k for k in keyset.keys}
        self._stamp = (st.st_mtime_ns, st.st_size)

    def verify(self, token: str) -> Principal:
        """Raises: AuthFailed with the reason (never the token)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthFailed("not a JWT") from exc
        alg = str(header.get("alg", ""))
        if alg not in JWT_ALGORITHMS:
            raise AuthFailed(f"JWT algorithm {alg[:16]!r} is not accepted")
        with self._lock:
            try:
                self._load()
            except ConfigError as exc:
                raise AuthFailed(str(exc)) from exc
            key = self._keys.get(header.get("kid")) or (next(iter(self._keys.values())) if len(self._keys) == 1
                                                         and "kid" not in header else None)
        if key is None or key.key_type != _KEY_TYPES.get(alg[:2]):
            raise AuthFailed("JWT signed with a key that is not in the JWKS")
        try:
            claims = jwt.decode(token, key=key, algorithms=[alg], audience=self.cfg.audience,
                                issuer=self.cfg.issuer, leeway=_LEEWAY_S,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise AuthFailed(f"JWT rejected: {type(exc).__name__}: {exc}") from exc
        return Principal(str(claims.get("sub") or claims.get("client_id") or "jwt"), _scopes(claims), "jwt")


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    items = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
    return frozenset(items)


class Throttle:
    """Failed authentications per peer in a sliding minute; past the limit the peer waits (429)."""

    def __init__(self, limit: int, window_s: float = 60.0, max_peers: int = 10000) -> None:
        self.limit, self.window_s, self.max_peers = limit, window_s, max_peers
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, peer: str) -> float:
        """Seconds this peer must wait, 0 when it may try."""
        now = time.monotonic()
        with self._lock:
            times = self._fails.get(peer)
            if not times:
                return 0.0
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) < self.limit:
                return 0.0
            return max(0.0, times[0] + self.window_s - now)

    def failed(self, peer: str) -> int:
        """Note one failure; returns the peer's failures in the window."""
        now = time.monotonic()
        with self._lock:
            if peer not in self._fails and len(self._fails) >= self.max_peers:
                self._fails = {p: t for p, t in self._fails.items() if t and t[-1] > now - self.window_s}
            times = self._fails.setdefault(peer, deque())
            times.append(now)
            while len(times) > self.limit:
                times.popleft()
            return len(times)


class Authenticator:
    """Bearer tokens: an API key (by its prefix) or else a JWT (when http.auth.jwt is configured)."""

    def __init__(self, keys: ApiKeys, jwt_verifier: JwtVerifier | None) -> None:
        self.keys, self.jwt = keys, jwt_verifier

    def authenticate(self, authorization: str | None) -> Principal:
        """Raises: AuthFailed."""
        if not authorization:
            raise AuthFailed("no credentials")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthFailed("not a Bearer token")
        if token.startswith(_PREFIX):
            return self.keys.verify(token)
        if self.jwt is None:
            raise AuthFailed("not an API key, and no JWT issuer is configured")
        return self.jwt.verify(token)
