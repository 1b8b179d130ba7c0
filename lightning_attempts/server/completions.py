"""Completions: callers waiting until some rollouts are stored (``wait_for_rollouts``), without polling.

The store calls ``Completions.finished`` (its ``on_finished`` hook) when a task's result
is stored or the task is cancelled; the hook only resolves futures and never calls back
into the store. When the server stops, ``close`` makes every wait raise instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class _Watch:
    pending: set[str]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Completions:
    """Callers waiting until some rollouts are stored (or cancelled); ``close`` ends every wait with an error."""

    def __init__(self) -> None:
        self._watches: dict[str, list[_Watch]] = {}
        self._closed: BaseException | None = None

    def close(self, error: BaseException) -> None:
        """The server stops: every wait, now or later, raises ``error`` rather than waiting for ever."""
        self._closed = error
        watches, self._watches = self._watches, {}
        for watch in {id(w): w for ws in watches.values() for w in ws}.values():
            if not watch.done.done():
                watch.done.set_exception(error)

    def finished(self, rollout_id: str) -> None:
        """The store's ``on_finished`` hook."""
        for watch in self._watches.pop(rollout_id, ()):
            watch.pending.discard(rollout_id)
            if not watch.pending and not watch.done.done():
                watch.done.set_result(None)

    async def wait(self, rollout_ids: Iterable[str], timeout: float | None) -> None:
        """Until every one of ``rollout_ids`` has finished, or ``timeout`` seconds pass."""
        if self._closed is not None:
            raise self._closed
        watch = _Watch(set(rollout_ids))
        if not watch.pending:
            return
        for rollout_id in watch.pending:
            self._watches.setdefault(rollout_id, []).append(watch)
        try:
            await asyncio.wait([watch.done], timeout=timeout)
            if watch.done.done():
                watch.done.result()  # raises what close() set
        finally:
            for rollout_id in watch.pending:
                watches = self._watches.get(rollout_id)
                if watches is not None:
                    watches.remove(watch)
                    if not watches:
                        del self._watches[rollout_id]
