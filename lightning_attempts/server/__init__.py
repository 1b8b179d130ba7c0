"""The attempt-aware server: ``AttemptAwareServer`` and the parts it is built from, a module each.

- ``server``: ``AttemptAwareServer``, upstream's server subclassed; it composes the parts
  below, swaps in the attempt-aware store at each start and keeps the public operations.
- ``routes``: the HTTP API (``/task``, ``/rollout``, ``/heartbeat``, ``/release``,
  ``/attempts``, ``/metrics``), answering from the store of the current run.
- ``producer_routes``: the producer API (``/tasks``, ``/resources``, ``/rollouts``), for a trainer
  in another process (``lightning_attempts.client.RemoteServer``).
- ``direct_route``: ``DirectRoute``, the route class serving the hot routes without FastAPI's
  per-request machinery.
- ``lifecycle``: ``Serving``, uvicorn started in the background, its bind errors
  (``ServerStartError``), its bound port, and its stop.
- ``polls``, ``deadlines``, ``completions``: what waits on the store, through its hooks:
  parked long polls, the timer requeueing expired claims, callers awaiting results.
- ``fleet``: ``FleetWatch``, what no single request shows, checked on a timer: tasks waiting while no
  worker asks for one (a stall), said at WARNING and in the stats.
- ``metrics``: the counters in Prometheus' format (with ``prometheus_client``).

Its options are ``lightning_attempts.options.Options``. The modules that log do so on
``lightning_attempts.server``.
"""

from __future__ import annotations

from ..errors import ServerStartError
from .direct_route import DirectRoute
from .polls import ParkedPolls
from .server import AttemptAwareServer

__all__ = ["AttemptAwareServer", "DirectRoute", "ParkedPolls", "ServerStartError"]
