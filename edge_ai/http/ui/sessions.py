"""Dashboard sessions: signed in with an API key (`read`), kept server-side in memory, ended by sign-out,
expiry, idleness or the key's revocation. The cookie carries only a random id; the store keeps its
SHA-256, never the id or the key. A restart of the node signs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

COOKIE = "edge_ai_session"
LIFETIME_S = 8 * 3600.0  # a shift: sign in again after it
IDLE_S = 30 * 60.0  # no request (the page refreshes itself every few seconds while open) for this long
LIMIT = 1000  # sessions kept at most; the oldest goes first


@dataclass
class Session:
    principal: str
    scopes: frozenset[str]
    key_prefix: str  # the API key's public prefix, to notice its revocation
    expires: float
    last_seen: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    notice: str = ""  # shown once on the next page (e.g. after a retry)

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf.encode(), token.encode())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    def __init__(self, lifetime_s: float = LIFETIME_S, idle_s: float = IDLE_S, limit: int = LIMIT) -> None:
        self.lifetime_s, self.idle_s, self.limit = lifetime_s, idle_s, limit
        self._by_digest: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, principal: str, scopes: frozenset[str], key_prefix: str) -> tuple[str, Session]:
        """A new session; returns (the cookie's token, the session)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(principal, scopes, key_prefix, now + self.lifetime_s, now)
        with self._lock:
            self._by_digest[_digest(token)] = session
            while len(self._by_digest) > self.limit:
                self._by_digest.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of this token (its idle clock restarts), or None."""
        if not token or len(token) > 100:
            return None
        now = time.time()
        digest = _digest(token)
        with self._lock:
            session = self._by_digest.get(digest)
            if session is None:
                return None
            if now >= session.expires or now - session.last_seen >= self.idle_s:
                del self._by_digest[digest]
                return None
            session.last_seen = now
            return session

    def end(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            return self._by_digest.pop(_digest(token), None)

    def viewed_within(self, seconds: float) -> bool:
        """Whether any session made a request in the last `seconds`."""
        now = time.time()
        with self._lock:
            return any(now - s.last_seen < seconds for s in self._by_digest.values())
