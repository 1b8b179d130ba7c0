"""The end of a step for the LLM proxy: later calls refused, the calls in flight waited for, those left cut.

verl's trainer puts vLLM to sleep right after the daemon's ``clear_data_and_server()``; a call
vLLM still generates then runs on an engine that frees its memory (upstream #589: CUDA
illegal memory access). ``StepGate`` knows every call forwarded to a backend until its answer
was read to its end (a client's hang-up does not end it: ``forwarding``). ``close()`` (the
batch is done) has the proxy refuse every call, attempt-scoped or plain, with 409
``step_ended`` until ``open()`` (the next batch); ``drain(timeout)`` waits on the loop until
none is in flight (an event set by the last call to leave, no polling) and, once ``timeout``
passed, cuts those left (their backend connections closed) and waits for them to unwind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .forwarding import Call
from .targets import Attempt

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_SECONDS = 120.0
"""Default bound on the wait (``llm_drain_timeout_seconds``): a 4k-token answer on an engine left with stragglers."""
UNWIND_SECONDS = 10.0
"""Longest wait for cut calls to unwind (closing a connection takes no time: only a stuck send could take long)."""
STEP_ENDED = "step_ended"
"""The refusal's code (409, ``x-should-retry: false``)."""


@dataclass(eq=False, slots=True)
class InFlight:
    """One call on its way to a backend or back."""

    attempt: Attempt | None
    call: Call
    task: asyncio.Task[Any]


@dataclass(frozen=True, slots=True)
class Drained:
    """What one ``drain`` did."""

    waited_for: int
    """Calls in flight when it began."""
    seconds: float
    cut: int
    left: int
    """Calls still in flight once the cut ones were given ``UNWIND_SECONDS`` (0 unless one is stuck)."""


class StepGate:
    """Whether the proxy takes calls (the step is open), and the calls in flight to the backends."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.closed = False
        self._calls: set[InFlight] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight_at_close = 0
        """Calls in flight when a step closed, summed over the steps."""
        self.drain_seconds = 0.0
        """Time ``drain`` waited, summed."""
        self.cut = 0
        self.refused = 0
        """Calls refused because the step had ended."""

    def __len__(self) -> int:
        return len(self._calls)

    def calls(self) -> list[InFlight]:
        """The calls in flight now."""
        return list(self._calls)

    def open(self) -> None:
        """A batch is set up: calls are taken again."""
        self.closed = False

    def close(self) -> int:
        """The batch is done: refuse calls from now on; the number of calls in flight (counted once per step)."""
        if not self.closed:
            self.closed = True
            self.in_flight_at_close += len(self._calls)
        return len(self._calls)

    def enter(self, attempt: Attempt | None) -> InFlight:
        """A call is about to go to a backend (the step is open): it counts in flight until ``leave``."""
        task = asyncio.current_task()
        assert task is not None
        entry = InFlight(attempt, Call(), task)
        self._calls.add(entry)
        self._idle.clear()
        return entry

    def leave(self, entry: InFlight) -> None:
        """The call's answer was read to its end, or it was cut."""
        self._calls.discard(entry)
        if not self._calls:
            self._idle.set()

    async def drain(self, timeout: float) -> Drained:
        """Close the step; wait up to ``timeout`` seconds for the calls in flight to end, then cut those left."""
        self.close()
        started = self._clock()
        waited_for = list(self._calls)
        if waited_for and timeout > 0:
            await _until(self._idle, timeout)
        left = [entry for entry in self._calls if not entry.call.cut]
        for entry in left:
            entry.call.cut = True
            entry.task.cancel()  # forwarding takes it as a cut: the backend connection closes
        if self._calls:
            await _until(self._idle, UNWIND_SECONDS)
        seconds = self._clock() - started
        self.drain_seconds += seconds
        self.cut += len(left)
        drained = Drained(len(waited_for), seconds, len(left), len(self._calls))
        _log(drained, waited_for, left, timeout)
        return drained

    def stats(self) -> dict[str, Any]:
        return {
            "step_closed": self.closed,
            "in_flight_at_step_end": self.in_flight_at_close,
            "drain_seconds": self.drain_seconds,
            "calls_cut": self.cut,
            "refused_step_ended": self.refused,
        }


async def _until(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def describe(entries: list[InFlight]) -> str:
    """``3 on 10.0.0.1:8000, 1 on ...; attempts a1 of r1, ...`` (up to 3 attempts named; plain calls counted)."""
    backends = Counter(entry.call.backend or "no backend yet" for entry in entries)
    on = ", ".join(f"{count} on {backend}" for backend, count in backends.most_common())
    attempts = [entry.attempt for entry in entries if entry.attempt is not None]
    named = ", ".join(f"{attempt.attempt_id} of {attempt.rollout_id}" for attempt in attempts[:3])
    more = f" and {len(attempts) - 3} more" if len(attempts) > 3 else ""
    plain = len(entries) - len(attempts)
    parts = [on]
    if attempts:
        parts.append(f"attempts {named}{more}")
    if plain:
        parts.append(f"{plain} plain /v1 call(s)")
    return "; ".join(parts)


def _log(drained: Drained, waited_for: list[InFlight], left: list[InFlight], timeout: float) -> None:
    if left:
        logger.warning(
            "Step ended: cut %d LLM call(s) still in flight after %.1fs (llm_drain_timeout_seconds=%g): %s. vLLM may "
            "still be generating them (it does not abort a request whose connection closes), and its sleep may "
            "then fail: raise llm_drain_timeout_seconds if it does",
            len(left),
            drained.seconds,
            timeout,
            describe(left),
        )
    elif waited_for:
        logger.info(
            "Step ended: waited %.2fs for %d LLM call(s) in flight (of attempts no longer needed) to end before "
            "vLLM sleeps: %s",
            drained.seconds,
            len(waited_for),
            describe(waited_for),
        )
    if drained.left:
        logger.error("Step ended: %d cut LLM call(s) did not unwind within %gs", drained.left, UNWIND_SECONDS)
