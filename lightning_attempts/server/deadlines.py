"""The deadline timer: expired claims are requeued at their deadline, whether or not anyone polls.

The store calls ``DeadlineTimer.deadline_added`` (its ``on_deadline`` hook) when its next
deadline moved earlier (a claim made while none was in flight, a claim leased while no
other was); the hook only schedules the timer's re-arming on the event loop and never
calls back into the store from inside one of its methods.
"""

from __future__ import annotations

import asyncio

from ..options import Clock
from ..store import AttemptAwareDataStore

TIMER_SLACK = 0.001
"""Seconds the deadline timer fires after a deadline, so that the claim has expired by then."""
STALL_SECONDS = 0.5
"""A timer firing later than this was held by a stalled event loop (a long GC pause, a paused VM)."""


class DeadlineTimer:
    """Requeues expired claims at their deadline, whether or not anyone polls.

    One ``loop.call_later`` handle, armed for the store's ``next_deadline()`` (O(1)):
    it costs nothing per claim in flight. The next deadline moves later by itself (a
    heartbeat, a completed claim: the timer fires early, finds nothing expired and
    re-arms); when it moves earlier the store says so through ``on_deadline``. The delay
    is read from the store's clock and slept in real time.

    A timer that fires late by more than ``STALL_SECONDS`` shows that the event loop itself
    stalled: heartbeats sent meanwhile wait unread in their sockets, and the timer runs before
    their requests do. So that no live worker loses its claim to the server's own stall, the
    time the timer was late is forgiven to every leased claim's silence before anything expires.
    """

    def __init__(self, store: AttemptAwareDataStore, clock: Clock, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._clock = clock
        self._loop = loop
        self._handle: asyncio.Handle | None = None
        self._due = 0.0  # the loop time the timer is armed for
        self._rearming = False
        self._stopped = False

    def deadline_added(self) -> None:
        """The store's ``on_deadline`` hook: the next deadline moved earlier; re-arm the timer, soon."""
        if not self._rearming and not self._stopped:
            self._rearming = True
            self._loop.call_soon(self._rearm)

    def _rearm(self) -> None:
        self._rearming = False
        self.arm()

    def arm(self) -> None:
        """Sleep until the next deadline (replacing any earlier arming)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        deadline = self._store.next_deadline()
        if deadline is None or self._stopped:
            return
        delay = max(deadline - self._clock(), 0.0) + TIMER_SLACK
        self._due = self._loop.time() + delay
        self._handle = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        late = self._loop.time() - self._due
        try:
            if late > STALL_SECONDS:
                self._store.forgive_silence(late)
            self._store.requeue_expired()
        finally:
            self.arm()

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
