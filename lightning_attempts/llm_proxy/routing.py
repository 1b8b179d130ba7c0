"""Which backend serves a call: the attempt's own, else the one with the fewest calls in flight.

All calls of one attempt go to one backend, so its turns reuse that vLLM server's prefix
cache (each turn's prompt extends the last one's). A new attempt, and each plain ``/v1``
call, goes to the backend with the fewest calls in flight, ties taken in turn. A backend
whose circuit is open (``health.BackendHealth``: it kept failing) is passed over, unless
every one is: failing fast, it has no calls in flight and would otherwise draw every new
call. An attempt routed to it moves: losing its prefix cache is better than failing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence

from .health import BackendHealth
from .targets import Attempt

Backends = Callable[[], Sequence[str]]
"""The backends' ``host:port`` addresses now (verl's ``server_addresses``, which may change every step)."""

MAX_ROUTES = 65536


class BackendRouter:
    """Picks a backend per call and counts the calls in flight on each."""

    def __init__(
        self,
        backends: Backends,
        *,
        max_routes: int = MAX_ROUTES,
        health: BackendHealth | None = None,
    ) -> None:
        self._backends = backends
        self._max_routes = max_routes
        self.health = health if health is not None else BackendHealth()
        self._routes: OrderedDict[Attempt, str] = OrderedDict()
        self._in_flight: dict[str, int] = {}
        self._turn = 0
        self.evicted_routes = 0
        """Routes forgotten because more than ``max_routes`` attempts had one (the least recently used first)."""
        self.resent = 0
        """Calls sent to another backend after a try failed before their answer began (``resending.Resends``)."""

    def count(self) -> int:
        """How many backends there are now."""
        return len(self._backends())

    def acquire(self, attempt: Attempt | None, exclude: Collection[str] = ()) -> str | None:
        """The backend for a call of ``attempt`` (None: a plain call), counted in flight; None if there is none.

        ``exclude``: backends this call already failed on (it is being re-sent)."""
        backends = [backend for backend in self._backends() if backend not in exclude]
        if not backends:
            return None
        chosen = self._routes.get(attempt) if attempt is not None else None
        if attempt is not None and chosen is not None and chosen in backends and self.health.admits(chosen):
            self._routes.move_to_end(attempt)
        else:
            chosen = self._least_loaded(backends)
            if attempt is not None:
                self._routes[attempt] = chosen
                if len(self._routes) > self._max_routes:
                    self._routes.popitem(last=False)
                    self.evicted_routes += 1
        self._in_flight[chosen] = self._in_flight.get(chosen, 0) + 1
        self.health.taken(chosen)
        return chosen

    def release(self, backend: str) -> None:
        """A call on ``backend`` ended."""
        left = self._in_flight[backend] - 1
        if left:
            self._in_flight[backend] = left
        else:
            del self._in_flight[backend]

    def forget(self, attempt: Attempt) -> None:
        """Forget the backend of ``attempt`` (it is over, or its backend failed)."""
        self._routes.pop(attempt, None)

    def backend_of(self, attempt: Attempt) -> str | None:
        """The backend ``attempt``'s calls go to, if it has one."""
        return self._routes.get(attempt)

    def in_flight(self) -> dict[str, int]:
        """Calls in flight per backend (backends with none are left out)."""
        return dict(self._in_flight)

    def routes(self) -> int:
        """Attempts with a backend remembered."""
        return len(self._routes)

    def _least_loaded(self, backends: Sequence[str]) -> str:
        count = len(backends)
        start = self._turn % count
        self._turn = start + 1
        best, best_load = backends[start], None
        for offset in range(count):
            backend = backends[(start + offset) % count]
            load = self._in_flight.get(backend, 0)
            if not self.health.admits(backend):
                load += 1 << 40  # only when every backend's circuit is open
            if best_load is None or load < best_load:
                best, best_load = backend, load
                if not load:
                    break
        return best
