"""Binding a server's port, importing only the standard library: ``bind()``, and ``ServerStartError`` saying why not.

``Serving`` binds the server's socket with it before uvicorn starts; ``lightning-attempts serve``
binds with it before agentlightning is loaded (seconds), so that a port in use is said at once.
"""

from __future__ import annotations

import os
import socket

from .errors import ServerStartError


def reason(error: OSError) -> str:
    """Why a bind failed, in words: ``Address already in use (errno 98)``, or a resolver's message."""
    if error.errno is not None and error.errno > 0:
        return f"{os.strerror(error.errno)} (errno {error.errno})"
    return str(error.strerror or error)  # e.g. a host name that does not resolve


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` as uvicorn binds one (not listening yet).

    Raises ``ServerStartError`` naming the address and why. The socket is ``IPPROTO_TCP``, as
    asyncio's own are: only then does asyncio turn Nagle's algorithm off on the connections it
    accepts (``TCP_NODELAY``); with it on, an answer's body, written after its headers, waited for
    the client's delayed ACK: about 40 ms per answer on a kept-alive connection.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name == "posix":  # as asyncio does: elsewhere SO_REUSEADDR would share a port in use
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServerStartError(f"Could not serve on {host}:{port}: {reason(error)}") from None
    except OverflowError:  # what socket raises for a port outside 0-65535
        sock.close()
        raise ServerStartError(f"Could not serve on {host}:{port}: a port is a number from 0 to 65535") from None
    return sock
