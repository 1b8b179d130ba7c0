"""Each backend's health: a circuit breaker that passes over a backend that keeps failing, and re-admits it.

A backend's circuit is *closed* (calls go there) until ``failures_to_open`` calls in a row
failed on it: it could not be reached, timed out before its first byte, broke off, or
answered 502, 503 or 504 (4xx answers and other statuses are the call's own business, not
the backend's). It is then *open*: no new call goes there, and attempts routed there move.
After ``cooldown`` seconds it is *half-open*: the next call is a trial, one at a time; the
trial answering closes the circuit (the backend is re-admitted), the trial failing opens it
for another ``cooldown``. So a backend that recovered is back within ``cooldown`` seconds of
its next call, never kept out for longer. Synchronous, on an injectable clock: the router
asks and the forwarder reports, on the proxy's event loop.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

FAILURES_TO_OPEN = 3
COOLDOWN_SECONDS = 5.0


class Circuit(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class _Backend:
    circuit: Circuit = Circuit.CLOSED
    in_a_row: int = 0
    """Failures since its last success."""
    opened_at: float = 0.0
    trial: bool = False
    """A half-open trial call is in flight."""
    failures: int = 0
    opened: int = 0
    readmitted: int = 0


class BackendHealth:
    """The circuit of each backend (by ``host:port``), counted since the start."""

    def __init__(
        self,
        *,
        failures_to_open: int = FAILURES_TO_OPEN,
        cooldown: float = COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures_to_open < 1 or cooldown < 0:
            raise ValueError("failures_to_open must be at least 1 and cooldown not negative")
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self._clock = clock
        self._backends: dict[str, _Backend] = {}

    def circuit(self, backend: str) -> Circuit:
        """The backend's circuit now (an open one whose cooldown is over is half-open)."""
        state = self._backends.get(backend)
        if state is None:
            return Circuit.CLOSED
        if state.circuit is Circuit.OPEN and self._clock() - state.opened_at >= self.cooldown:
            state.circuit = Circuit.HALF_OPEN
        return state.circuit

    def admits(self, backend: str) -> bool:
        """Whether a new call may go to ``backend`` now: closed, or half-open with no trial in flight."""
        circuit = self.circuit(backend)
        if circuit is Circuit.HALF_OPEN:
            return not self._backends[backend].trial
        return circuit is Circuit.CLOSED

    def taken(self, backend: str) -> None:
        """A call goes to ``backend``: on a half-open one, that call is the trial."""
        if self.circuit(backend) is Circuit.HALF_OPEN:
            self._backends[backend].trial = True

    def succeeded(self, backend: str) -> None:
        """A call on ``backend`` got its answer (any status but 502, 503 and 504)."""
        state = self._backends.get(backend)
        if state is None:
            return
        state.in_a_row = 0
        state.trial = False
        if state.circuit is not Circuit.CLOSED:
            state.circuit = Circuit.CLOSED
            state.readmitted += 1
            logger.warning("LLM backend %s re-admitted: a trial call succeeded", backend)

    def failed(self, backend: str, why: str) -> None:
        """A call on ``backend`` failed for ``why`` (connect_error, first_byte_timeout, status_503, ...)."""
        state = self._backends.setdefault(backend, _Backend())
        state.failures += 1
        state.in_a_row += 1
        circuit = self.circuit(backend)
        if circuit is Circuit.HALF_OPEN:
            state.trial = False
            state.circuit, state.opened_at = Circuit.OPEN, self._clock()
            logger.info("LLM backend %s still failing (%s): passed over for another %gs", backend, why, self.cooldown)
        elif circuit is Circuit.CLOSED and state.in_a_row >= self.failures_to_open:
            state.circuit, state.opened_at = Circuit.OPEN, self._clock()
            state.opened += 1
            logger.warning(
                "LLM backend %s passed over: %d calls in a row failed (the last: %s); a trial call in %gs",
                backend,
                state.in_a_row,
                why,
                self.cooldown,
            )

    def ended(self, backend: str) -> None:
        """A call on ``backend`` ended with no verdict on the backend (its client left): it was no trial."""
        state = self._backends.get(backend)
        if state is not None:
            state.trial = False

    def stats(self) -> dict[str, Any]:
        """Failures and circuits opened in all, backends open now, and each backend's figures."""
        per_backend = {
            backend: {
                "circuit": self.circuit(backend).value,
                "failures": state.failures,
                "failures_in_a_row": state.in_a_row,
                "opened": state.opened,
                "readmitted": state.readmitted,
            }
            for backend, state in self._backends.items()
        }
        return {
            "backend_failures": sum(state.failures for state in self._backends.values()),
            "backends_opened": sum(state.opened for state in self._backends.values()),
            "backends_open": sum(1 for entry in per_backend.values() if entry["circuit"] != Circuit.CLOSED.value),
            "backends": per_backend,
        }
