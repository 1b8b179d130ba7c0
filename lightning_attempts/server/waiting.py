"""What the server waits for, without polling: parked long polls, claim deadlines, completions.

The store is a synchronous state machine; it calls the hooks these classes provide
(``on_claimable``, ``on_deadline``, ``on_finished``), which only schedule work on the
event loop or resolve futures and never call back into the store from inside one of
its methods.

- ``ParkedPolls``: ``GET /task?wait=S`` requests waiting for a task, first come first
  served. A task is claimed on the first waiter's behalf the moment it is handed out
  (no ``await`` between the claim and the hand-off); a waiter whose connection closed
  gives its claim back, so no claim is ever left to a poller that is gone.
- ``DeadlineTimer``: one event-loop timer armed for the store's next claim deadline,
  which requeues expired claims when no worker is polling.
- ``Completions``: callers waiting for some rollouts to be stored (``wait_for_rollouts``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from ..models import AttemptTask
from ..store import AttemptAwareDataStore, Clock

logger = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
"""The ASGI receive channel of a request."""

DEFAULT_MAX_POLL_WAIT = 20.0
"""Longest a ``GET /task?wait=S`` is held by default, in seconds (SQS's longest wait, too)."""
TIMER_SLACK = 0.001
"""Seconds the deadline timer fires after a deadline, so that the claim has expired by then."""


@dataclass(eq=False, slots=True)
class _Poll:
    """A parked ``GET /task``: its answer (a claimed task, or None) and whether its client left."""

    answer: asyncio.Future[AttemptTask | None]
    gone: bool = False


class ParkedPolls:
    """Long polls waiting for a task, served first come first served."""

    def __init__(self, store: AttemptAwareDataStore) -> None:
        self._store = store
        self._parked: dict[_Poll, None] = {}  # insertion order is arrival order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handing_out = False
        self.closing = False
        """Set on shutdown: polls are answered at once, none parks."""

    def __len__(self) -> int:
        return len(self._parked)

    def claimable(self) -> None:
        """The store's ``on_claimable`` hook: hand queued tasks to parked polls, soon."""
        if self._parked and not self._handing_out and self._loop is not None:
            self._handing_out = True
            self._loop.call_soon(self._hand_out)

    def _hand_out(self) -> None:
        """Claim a task for each parked poll in arrival order, while tasks remain."""
        self._handing_out = False
        while self._parked:
            poll = next(iter(self._parked))
            if poll.answer.done():  # its request was cancelled, not yet unparked
                del self._parked[poll]
                continue
            task = self._store.claim()
            if task is None:
                return
            del self._parked[poll]
            poll.answer.set_result(task)

    async def wait(self, receive: Receive, seconds: float) -> AttemptTask | None:
        """Park until a task is claimed for this poll (returned), ``seconds`` pass or shutdown (None).

        ``receive`` is the request's ASGI channel: when the client disconnects, the
        poll leaves the queue, and a claim already made for it is given back.
        """
        loop = self._loop = asyncio.get_running_loop()
        poll = _Poll(loop.create_future())
        self._parked[poll] = None
        if self._store.queued():
            self.claimable()  # a hand-out is already pending when tasks are queued; make sure
        timer = loop.call_later(seconds, self._unpark, poll)
        watcher = loop.create_task(self._until_gone(receive, poll))
        try:
            task = await poll.answer
        except asyncio.CancelledError:
            self._unpark(poll)
            self._give_back(poll)
            raise
        finally:
            timer.cancel()
            watcher.cancel()
        if task is not None and poll.gone:
            self._give_back(poll)
            return None
        return task

    def _unpark(self, poll: _Poll) -> None:
        """Leave the queue with no task (time is up, the client left, or shutdown)."""
        self._parked.pop(poll, None)
        if not poll.answer.done():
            poll.answer.set_result(None)

    def _give_back(self, poll: _Poll) -> None:
        answer = poll.answer
        if answer.done() and not answer.cancelled() and (task := answer.result()) is not None:
            self._store.give_back(task.rollout_id, task.attempt_id or "")

    async def _until_gone(self, receive: Receive, poll: _Poll) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        poll.gone = True
        self._unpark(poll)

    def close(self) -> None:
        """Answer every parked poll now (no task), and park no more: the server is stopping."""
        self.closing = True
        parked, self._parked = self._parked, {}
        for poll in parked:
            if not poll.answer.done():
                poll.answer.set_result(None)


class DeadlineTimer:
    """Requeues expired claims at their deadline, whether or not anyone polls.

    One ``loop.call_later`` handle, armed for the store's ``next_deadline()`` (O(1)):
    it costs nothing per claim in flight. Deadlines only move later (a heartbeat, a
    completed claim), except when a claim is made while none was in flight, which
    the store reports through ``on_deadline``. The delay is read from the store's
    clock and slept in real time.
    """

    def __init__(self, store: AttemptAwareDataStore, clock: Clock, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._clock = clock
        self._loop = loop
        self._handle: asyncio.Handle | None = None
        self._stopped = False

    def deadline_added(self) -> None:
        """The store's ``on_deadline`` hook: arm the timer, soon, unless it is armed."""
        if self._handle is None and not self._stopped:
            self._handle = self._loop.call_soon(self.arm)

    def arm(self) -> None:
        """Sleep until the next deadline (replacing any earlier arming)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        deadline = self._store.next_deadline()
        if deadline is None or self._stopped:
            return
        delay = max(deadline - self._clock(), 0.0) + TIMER_SLACK
        self._handle = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        try:
            self._store.requeue_expired()
        finally:
            self.arm()

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


@dataclass(eq=False, slots=True)
class _Watch:
    pending: set[str]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Completions:
    """Callers waiting until some rollouts are stored (or cancelled)."""

    def __init__(self) -> None:
        self._watches: dict[str, list[_Watch]] = {}

    def finished(self, rollout_id: str) -> None:
        """The store's ``on_finished`` hook."""
        for watch in self._watches.pop(rollout_id, ()):
            watch.pending.discard(rollout_id)
            if not watch.pending and not watch.done.done():
                watch.done.set_result(None)

    async def wait(self, rollout_ids: Iterable[str], timeout: float | None) -> None:
        """Until every one of ``rollout_ids`` has finished, or ``timeout`` seconds pass."""
        watch = _Watch(set(rollout_ids))
        if not watch.pending:
            return
        for rollout_id in watch.pending:
            self._watches.setdefault(rollout_id, []).append(watch)
        try:
            await asyncio.wait([watch.done], timeout=timeout)
        finally:
            for rollout_id in watch.pending:
                watches = self._watches.get(rollout_id)
                if watches is not None:
                    watches.remove(watch)
                    if not watches:
                        del self._watches[rollout_id]
