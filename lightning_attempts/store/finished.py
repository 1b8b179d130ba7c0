"""The memory of finished tasks: enough of each to answer its late results, up to a bound."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import ItemsView, Iterator

from .records import FinishedTask


class FinishedTasks:
    """Completed and cancelled tasks, the oldest forgotten first once more than ``limit`` are kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: OrderedDict[str, FinishedTask] = OrderedDict()

    def remember(self, rollout_id: str, finished: FinishedTask) -> None:
        self._tasks[rollout_id] = finished
        if len(self._tasks) > self.limit:
            self._tasks.popitem(last=False)

    def get(self, rollout_id: str) -> FinishedTask | None:
        return self._tasks.get(rollout_id)

    def __contains__(self, rollout_id: object) -> bool:
        return rollout_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def items(self) -> ItemsView[str, FinishedTask]:
        """Each remembered task's rollout id and record, the oldest first."""
        return self._tasks.items()

    def newest_first(self) -> Iterator[tuple[str, FinishedTask]]:
        """Each remembered task's rollout id and record, the most recently finished first (no copy)."""
        return reversed(self._tasks.items())
