"""Host names and addresses: which name this machine's loopback, the host a request was sent to, and the URL a
client of this machine uses for a server bound to a host."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
"""A DNS name (RFC 1123 labels), optionally ending in a dot."""


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) names this machine's loopback.

    ``localhost`` and its subdomains (RFC 6761), ``127.0.0.0/8``, ``::1`` and IPv4-mapped loopback.
    """
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def request_host(host_header: str | None) -> str | None:
    """The host part of a ``Host`` header (IPv6 in brackets), or None when absent or not a plain host."""
    if not host_header:
        return None
    try:
        parts = urlsplit("//" + host_header.strip())
        parts.port  # noqa: B018 (raises ValueError for a malformed port)
    except ValueError:
        return None
    host = parts.hostname
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    # IPv6: only a literal address, served back in brackets. Python 3.10's urlsplit strips any brackets
    # unchecked ("[not-ipv6]" gives "not-ipv6"), 3.11+ refuses what is not an address in them.
    if ":" in host or parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return f"[{host}]"
    return host if _HOST_NAME.match(host) else None


def is_unspecified_host(host: str) -> bool:
    """Whether a server bound to ``host`` listens on every interface: ``0.0.0.0``, ``::`` or an empty host."""
    bare = host.strip("[]")
    try:
        return not bare or ipaddress.ip_address(bare).is_unspecified
    except ValueError:
        return False


def client_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` for a client on this machine of a server bound to ``host``.

    A wildcard address, which a server binds to listen on every interface but no client can send to,
    becomes this machine's loopback of its family: ``0.0.0.0`` (or an empty host) ``127.0.0.1``, ``::``
    ``[::1]``. An IPv6 address is put in brackets; anything else is kept as it is.
    """
    bare = host.strip("[]")
    try:
        address = ipaddress.ip_address(bare.split("%", 1)[0]) if bare else ipaddress.IPv4Address(0)
    except ValueError:
        return f"http://{host}:{port}"  # a name
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        bare = str(address)
    return f"http://[{bare}]:{port}" if address.version == 6 else f"http://{bare}:{port}"
