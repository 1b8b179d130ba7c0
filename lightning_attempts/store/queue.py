"""The tasks waiting for a claim, first in first out, each removable in O(1)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator

from ..compat import Task

Hook = Callable[[], None]


class TaskQueue:
    """The tasks waiting for a claim: never claimed, or requeued.

    It replaces upstream's ``asyncio.Queue`` under the same name and methods, so that
    upstream's ``add_task`` works unchanged, and a salvaged or cancelled task can
    leave the queue without a scan. Every task that becomes claimable comes through
    ``put_nowait``, which then calls ``on_put`` (the server hands it to a parked poll).
    """

    def __init__(self) -> None:
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self.on_put: Hook | None = None

    async def put(self, task: Task) -> None:
        self.put_nowait(task)

    def put_nowait(self, task: Task, *, front: bool = False) -> None:
        """Queue ``task`` last (or first: a claim given back keeps its turn)."""
        self._tasks[task.rollout_id] = task
        if front:
            self._tasks.move_to_end(task.rollout_id, last=False)
        if self.on_put is not None:
            self.on_put()

    def get_nowait(self) -> Task:
        try:
            return self._tasks.popitem(last=False)[1]
        except KeyError:
            raise asyncio.QueueEmpty from None

    def discard(self, rollout_id: str) -> Task | None:
        return self._tasks.pop(rollout_id, None)

    def peek(self, rollout_id: str) -> Task | None:
        """The waiting task of that id, left in place; None if it does not wait."""
        return self._tasks.get(rollout_id)

    def qsize(self) -> int:
        return len(self._tasks)

    def empty(self) -> bool:
        return not self._tasks

    def __contains__(self, rollout_id: object) -> bool:
        return rollout_id in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)
