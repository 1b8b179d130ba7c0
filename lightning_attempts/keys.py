"""API keys as agentlightning 1.0 reads and sends them: ``AGL_KEY``; ``Authorization: Bearer`` or ``x-api-key``."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable

KEY_ENV = "AGL_KEY"
"""The environment variable agentlightning 1.0 hands its workers the key in."""
COOKIE = "lightning_attempts_key"
"""The cookie a browser presents the key in, set by ``GET /dashboard?key=...`` (HttpOnly, SameSite=Strict), accepted
only on the read routes (``auth.BROWSER_READS``)."""


def validate_key(key: str | None) -> str | None:
    """``key`` if usable in a header, ``None`` for no key (``None`` or empty, as 1.0 reads ``AGL_KEY``)."""
    if not key:
        return None
    if not all("!" <= char <= "~" for char in key):
        raise ValueError("api_key must be printable ASCII without spaces (it travels in an HTTP header)")
    return key


def key_from_env() -> str | None:
    """The key in ``AGL_KEY``, or ``None`` when it is unset or empty."""
    return validate_key(os.environ.get(KEY_ENV))


class KeyCheck:
    """Whether a request's headers carry the key, compared in constant time."""

    __slots__ = ("_bearer", "_key")

    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self._bearer = b"bearer " + self._key

    def presented(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether ASGI ``headers`` (lower-case names) carry the key as ``Authorization: Bearer`` or ``x-api-key``."""
        for name, value in headers:
            if name == b"authorization":
                # The scheme is case-insensitive (RFC 7235); the key is compared in constant time.
                if hmac.compare_digest(value[:7].lower() + value[7:], self._bearer):
                    return True
            elif name == b"x-api-key" and hmac.compare_digest(value, self._key):
                return True
        return False

    def matches(self, value: bytes) -> bool:
        """Whether ``value`` is the key (constant time)."""
        return hmac.compare_digest(value, self._key)

    def in_cookie(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether ASGI ``headers`` carry the key in the dashboard's cookie (``COOKIE``)."""
        prefix = COOKIE.encode() + b"="
        for name, value in headers:
            if name == b"cookie":
                for part in value.split(b";"):
                    part = part.strip()
                    if part.startswith(prefix) and self.matches(part[len(prefix) :]):
                        return True
        return False


def carries_a_key(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether ASGI ``headers`` present some key (right or wrong), to say which in a refusal."""
    return any(name in (b"authorization", b"x-api-key") for name, _ in headers)
