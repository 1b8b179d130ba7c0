"""The attempt-aware server: ``AttemptAwareServer`` and the parts it is built from."""

from __future__ import annotations

from .options import ServerOptions
from .polls import DEFAULT_MAX_POLL_WAIT, ParkedPolls
from .routing import DEFAULT_MAX_BODY_BYTES, DirectRoute
from .server import AttemptAwareServer, ServerStartError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_POLL_WAIT",
    "AttemptAwareServer",
    "DirectRoute",
    "ParkedPolls",
    "ServerOptions",
    "ServerStartError",
]
