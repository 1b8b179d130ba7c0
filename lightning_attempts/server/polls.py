"""Parked long polls: ``GET /task?wait=S`` requests waiting for a task, first come first served.

The store calls ``ParkedPolls.claimable`` (its ``on_claimable`` hook) whenever a task
becomes claimable; the hook only schedules the hand-out on the event loop and never calls
back into the store from inside one of its methods. A task is claimed on the first
waiter's behalf the moment it is handed out (no ``await`` between the claim and the
hand-off); a waiter whose connection closed gives its claim back, so no claim is ever
left to a poller that is gone: one whose client hung up while the loop was busy, before
the hang-up was read, is caught when the poll resumes, before it answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..models import AttemptTask
from ..store import AttemptAwareDataStore

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
"""The ASGI receive channel of a request."""


@dataclass(eq=False, slots=True)
class _Poll:
    """A parked ``GET /task``: its answer (a claimed task, or None) and whether its client left."""

    answer: asyncio.Future[AttemptTask | None]
    leased: bool = False
    """Its worker heartbeats: the claim made for it is leased (``GET /task?heartbeats=1``)."""
    worker: str | None = None
    """Who polls (``AttemptAwareDataStore.claim``'s ``worker``)."""
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
            task = self._store.claim(leased=poll.leased, worker=poll.worker)
            if task is None:
                return
            del self._parked[poll]
            poll.answer.set_result(task)

    async def wait(
        self, receive: Receive, seconds: float, *, leased: bool = False, worker: str | None = None
    ) -> AttemptTask | None:
        """Park until a task is claimed for this poll (returned), ``seconds`` pass or shutdown (None).

        ``receive`` is the request's ASGI channel: when the client disconnects, the
        poll leaves the queue, and a claim already made for it is given back. ``leased``:
        the claim made for it is leased (its worker heartbeats); ``worker``: who polls.
        """
        loop = self._loop = asyncio.get_running_loop()
        poll = _Poll(loop.create_future(), leased, worker)
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
        # The watcher may not have run since the hang-up was read: ask the channel itself.
        if task is not None and (poll.gone or await _hung_up(receive)):
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


async def _hung_up(receive: Receive) -> bool:
    """Whether the request's client has hung up, without waiting: a ``receive`` that would block says no.

    The server answers ``http.disconnect`` at once once it has read the hang-up; otherwise
    the receive is left waiting for one loop turn and then cancelled. (Starlette's
    ``Request.is_disconnected`` does this with an anyio cancel scope, whose backend a
    server on these routes would load on its first hand-out: 37 ms with the loop blocked.)
    """
    receiving = asyncio.ensure_future(receive())
    await asyncio.sleep(0)  # the receive runs up to its first wait, if it has one
    if not receiving.done():
        receiving.cancel()
        return False
    return receiving.result().get("type") == "http.disconnect"
