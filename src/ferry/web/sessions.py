"""The console's sessions: which browser holds which API token, kept in the server's memory only.

A browser proves the API token once, on the login form; from then on it holds a session id in an HttpOnly
cookie. The token itself stays here, on the server side: it never travels back to the browser, and
nothing the page's scripts can read holds it. Every API call the console makes for a session presents
that session's token, so a token reset (`ferry serve --reset-token`) ends every session at its next
request, and a restart of `ferry serve` ends them all (log in again).

Bounded: a session ends after IDLE seconds without a request or LIFETIME seconds after the login, and at
most MAX_SESSIONS live at once (the least recently used goes first).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IDLE = 8 * 3600.0
LIFETIME = 24 * 3600.0
MAX_SESSIONS = 500
MAX_FLASHES = 5  # messages waiting to be shown on the next page
MAX_PENDING = 8  # locations scanned on the New migration page and not started yet


@dataclass
class Session:
    id: str
    token: str
    csrf: str  # sent back with every state-changing request (form field or header)
    created: float
    seen: float
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (kind, text), shown once
    # Scanned locations by a random key: the location as typed (it may carry a credential) stays here, and
    # the page holds only the key and the redacted form.
    pending: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)

    def flash(self, kind: str, text: str) -> None:
        self.flashes = [*self.flashes, (kind, text)][-MAX_FLASHES:]

    def take_flashes(self) -> list[tuple[str, str]]:
        shown, self.flashes = self.flashes, []
        return shown

    def keep_scan(self, scan: dict[str, Any]) -> str:
        key = secrets.token_urlsafe(12)
        self.pending[key] = scan
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)
        return key

    def csrf_matches(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf.encode())


class Sessions:
    """Live sessions by id; safe to use from several threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_sessions: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self._max = max_sessions
        self._lock = threading.Lock()
        self._live: OrderedDict[str, Session] = OrderedDict()

    def start(self, token: str) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._live[session.id] = session
            while len(self._live) > self._max:
                self._live.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id, marked as used now; None when unknown or expired."""
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            session = self._live.get(session_id)
            if session is None:
                return None
            if now - session.seen > IDLE or now - session.created > LIFETIME:
                del self._live[session_id]
                return None
            session.seen = now
            self._live.move_to_end(session_id)
            return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._live.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._live)
