"""``lightning-attempts serve``'s LLM proxy settings: its backends and its port, from the flags or the variables.

Standard library only: ``serve`` checks them, and binds the port, before it loads agentlightning.

- Backends: each ``--llm-backend``, else ``LIGHTNING_ATTEMPTS_LLM_BACKENDS`` (comma-separated).
  None: no proxy, as before. A backend is ``host:port`` or its URL (``backend_address``).
- Port: ``--llm-proxy-port``, else ``LIGHTNING_ATTEMPTS_LLM_PROXY_PORT``, else the server's port
  plus one (8001 beside the default 8000, 10000 beside 9999): one number names the pair, and the
  trainer that publishes the LLM endpoint derives it; a server on port 0 (any free port) has its
  proxy on any free port too, both said on stderr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import OptionError
from .switch.variables import LLM_BACKENDS, LLM_PROXY_PORT

PATHS = ("", "/", "/v1", "/v1/")
"""The paths a backend's URL may have: the proxy adds ``/v1/...`` itself."""


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Where the proxy serves and what it forwards to."""

    backends: tuple[str, ...]
    """``host:port`` each, as verl's ``server_addresses`` name vLLM servers."""
    port: int


def backend_address(written: str) -> str:
    """``host:port`` (an IPv6 host in brackets) of the backend ``written`` names; ``OptionError`` if none.

    ``10.0.0.7:8000``, ``http://10.0.0.7:8000`` and ``http://10.0.0.7:8000/v1`` name the same
    backend; another scheme or path, no port, credentials or a query are refused.
    """
    text = written.strip()
    shown = repr(written)
    if not text:
        raise OptionError("an LLM backend is empty: name it as host:port, e.g. 127.0.0.1:8000")
    try:
        parts = urlsplit(text if "://" in text else "http://" + text)
        port = parts.port
    except ValueError as error:
        raise OptionError(f"LLM backend {shown}: {error}") from None
    if parts.scheme != "http":
        raise OptionError(f"LLM backend {shown}: only http:// is served (vLLM's OpenAI server), not {parts.scheme}://")
    if not parts.hostname or port is None:
        raise OptionError(f"LLM backend {shown} names no port: write host:port, e.g. 127.0.0.1:8000")
    if parts.username is not None or parts.query or parts.fragment or parts.path not in PATHS:
        raise OptionError(f"LLM backend {shown}: write host:port or http://host:port[/v1] (the proxy adds /v1/...)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def backend_addresses(written: Sequence[str]) -> tuple[str, ...]:
    """Each backend of ``written`` as ``host:port``, in order; ``OptionError`` for a bad one or one named twice."""
    addresses: list[str] = []
    for each in written:
        address = backend_address(each)
        if address in addresses:
            raise OptionError(f"LLM backend {address} is named twice")
        addresses.append(address)
    return tuple(addresses)


def proxy_settings(
    backends: Sequence[str], port: int | None, server_port: int, environ: Mapping[str, str] = os.environ
) -> ProxySettings | None:
    """The proxy's settings from ``serve``'s flags (``backends``, ``port``; a flag wins over its variable), or None
    when no backend is named. ``OptionError`` names the flag or variable that is wrong."""
    if backends:
        addresses = backend_addresses(backends)
    else:
        listed = [each for each in environ.get(LLM_BACKENDS, "").split(",") if each.strip()]
        try:
            addresses = backend_addresses(listed)
        except OptionError as error:
            raise OptionError(f"{LLM_BACKENDS}: {error}") from None
    if port is None and environ.get(LLM_PROXY_PORT, "").strip():
        port = _port(environ[LLM_PROXY_PORT])
    if not addresses:
        if port is not None:
            raise OptionError(f"an LLM proxy port is given but no backend: name one (--llm-backend, {LLM_BACKENDS})")
        return None
    if port is None:
        if server_port == 65535:
            raise OptionError("the LLM proxy's default port is the server's plus one: give --llm-proxy-port")
        port = server_port + 1 if server_port else 0
    if port and port == server_port:
        raise OptionError(f"the LLM proxy cannot serve on the server's own port, {port}")
    return ProxySettings(addresses, port)


def _port(raw: str) -> int:
    try:
        port = int(raw.strip())
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise OptionError(f"{LLM_PROXY_PORT} is not a valid value: a port is a number from 0 to 65535, not {raw!r}")
    return port
