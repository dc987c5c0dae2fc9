"""One-time tokens for streaming requests: what Exec, Attach and PortForward answer with a URL for.

As in kubelet's streaming library: a token is good for one connection and for a
minute, and only a bounded number wait at once.
"""
from __future__ import annotations

import secrets
import time
from collections import OrderedDict

TOKEN_SECONDS = 60.0
MAX_WAITING = 1000


class TokenError(Exception):
    """No more tokens can be handed out right now."""


class RequestCache:
    def __init__(self, ttl: float = TOKEN_SECONDS, limit: int = MAX_WAITING, clock=time.monotonic):
        self.ttl = ttl
        self.limit = limit
        self.clock = clock
        self._waiting: OrderedDict[str, tuple[float, object]] = OrderedDict()

    def _expire(self) -> None:
        now = self.clock()
        while self._waiting:
            token, (deadline, _) = next(iter(self._waiting.items()))
            if deadline > now:
                break
            del self._waiting[token]

    def insert(self, request: object) -> str:
        self._expire()
        if len(self._waiting) >= self.limit:
            raise TokenError(f"{self.limit} streaming requests are already waiting for their connection")
        token = secrets.token_urlsafe(8)
        self._waiting[token] = (self.clock() + self.ttl, request)
        return token

    def consume(self, token: str) -> object | None:
        """The request the token was made for, once; None when unknown, used or expired."""
        self._expire()
        entry = self._waiting.pop(token, None)
        return entry[1] if entry is not None else None
