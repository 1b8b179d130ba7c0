"""API keys as agentlightning 1.0 checks them: ``Authorization: Bearer <key>`` or ``x-api-key: <key>``.

``ApiKeyMiddleware`` is a pure ASGI middleware around the whole application, so every
route, including ``/docs``, ``/openapi.json``, unknown paths and any route added later,
answers 401 without the key, before routing and before any body is read. The key is
compared in constant time; a refusal is logged with the route and the peer, never with
what was presented.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

KEY_ENV = "AGL_KEY"
"""The environment variable agentlightning 1.0 hands its workers the key in."""

_BODY = b'{"detail":"Invalid or missing API key"}'  # 1.0's words
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"www-authenticate", b"Bearer"),
]


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


def is_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiKeyMiddleware:
    """Answer 401 (``WWW-Authenticate: Bearer``) to any HTTP request without ``key``; count and log it."""

    def __init__(self, app: ASGIApp, *, key: str, on_refused: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self._key = key.encode()
        self._bearer = b"bearer " + self._key
        self._on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorized(scope["headers"]):
            await self.app(scope, receive, send)
            return
        self._refuse(scope)
        await send({"type": "http.response.start", "status": 401, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": _BODY})

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:  # ASGI header names are lower-case
            if name == b"authorization":
                # The scheme is case-insensitive (RFC 7235); the key is compared in constant time.
                if hmac.compare_digest(value[:7].lower() + value[7:], self._bearer):
                    return True
            elif name == b"x-api-key" and hmac.compare_digest(value, self._key):
                return True
        return False

    def _refuse(self, scope: Scope) -> None:
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "unknown peer"
        presented = any(name in (b"authorization", b"x-api-key") for name, _ in scope["headers"])
        logger.warning(
            "Refused %s %r from %s: %s API key (401)",  # %r: a decoded path may hold a newline
            scope["method"],
            scope["path"],
            peer,
            "wrong" if presented else "no",
        )
        self._on_refused()
