"""The attempt-aware server: ``AttemptAwareServer`` and the parts it is built from, a module each.

- ``server``: ``AttemptAwareServer``, upstream's server subclassed; it composes the parts
  below, swaps in the attempt-aware store at each start and keeps the public operations.
- ``options``: ``ServerOptions``, the keyword-only options with their defaults and checks.
- ``routes``: the HTTP API (``/task``, ``/rollout``, ``/heartbeat``, ``/release``,
  ``/attempts``, ``/metrics``), answering from the store of the current run.
- ``routing``: ``DirectRoute``, the route class serving the hot routes without FastAPI's
  per-request machinery.
- ``lifecycle``: ``Serving``, uvicorn started in the background, its bind errors
  (``ServerStartError``), its bound port, and its stop.
- ``polls``, ``deadlines``, ``completions``: what waits on the store, through its hooks:
  parked long polls, the timer requeueing expired claims, callers awaiting results.
- ``metrics``: the counters in Prometheus' format (with ``prometheus_client``).

The modules that log do so on ``lightning_attempts.server``.
"""

from __future__ import annotations

from .lifecycle import ServerStartError
from .options import ServerOptions
from .polls import DEFAULT_MAX_POLL_WAIT, ParkedPolls
from .routing import DEFAULT_MAX_BODY_BYTES, DirectRoute
from .server import AttemptAwareServer

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_POLL_WAIT",
    "AttemptAwareServer",
    "DirectRoute",
    "ParkedPolls",
    "ServerOptions",
    "ServerStartError",
]
