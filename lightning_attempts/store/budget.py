"""The task budget: how long each task has been worked on, and which task runs out of its budget next.

A task's budget (``task_budget`` task timeouts) counts

- the time its claims held it (a claim that ends by its timeout counts its whole age);
- the time it waited in the queue while no claim at all was in flight: no worker was working on
  any task, as far as the server can tell (the fleet idle, or stuck, say, inside this task's
  earlier attempts, which the server has stopped waiting for).

It does not count the time the task waited behind other work: a task given back, or requeued
after a timeout or a failure, behind a long queue is not given up for having waited.

The first count runs on the store's clock; the second on an *idle clock*, which runs only while
no claim is in flight. Each keeps a heap of deadlines, live claims on the first, waiting tasks
on the second, with stale entries (a task since claimed, finished, or requeued anew) skipped
when they come to the top and dropped when they outnumber the valid ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from .records import ClaimedTask

COMPACT_FROM = 1024
"""Entries a heap holds before its stale ones are first dropped; then each time it doubles."""

Entry = tuple[float, int, ClaimedTask, int, bool]
"""(deadline, tie-break, task, its attempts when pushed, whether a claim was live then)."""


class _Deadlines:
    """A heap of tasks' deadlines whose stale entries are skipped at the top and dropped as it grows."""

    def __init__(self, is_claimed: Callable[[ClaimedTask], bool]) -> None:
        self._heap: list[Entry] = []
        self._is_claimed = is_claimed
        self._order = itertools.count()
        self._compact_at = COMPACT_FROM

    def __bool__(self) -> bool:
        return bool(self._heap)

    def push(self, deadline: float, claimed: ClaimedTask) -> None:
        heap = self._heap
        heapq.heappush(heap, (deadline, next(self._order), claimed, len(claimed.attempts), claimed.live))
        if len(heap) >= self._compact_at:  # each entry is looked at once per doubling: O(1) a push
            heap[:] = [entry for entry in heap if self._valid(entry)]
            heapq.heapify(heap)
            self._compact_at = max(2 * len(heap), COMPACT_FROM)

    def top(self) -> tuple[float, ClaimedTask] | None:
        """The earliest deadline still valid, and its task; None: none."""
        heap = self._heap
        while heap and not self._valid(heap[0]):
            heapq.heappop(heap)
        return (heap[0][0], heap[0][2]) if heap else None

    def _valid(self, entry: Entry) -> bool:
        """Whether the entry still describes its task: unfinished, and neither claimed nor requeued since."""
        _, _, claimed, attempts, live = entry
        return len(claimed.attempts) == attempts and claimed.live is live and self._is_claimed(claimed)


class Budget:
    """What each claimed task has spent of its budget, the idle clock, and the next task to run out."""

    def __init__(self, seconds: float, is_claimed: Callable[[ClaimedTask], bool], now: float) -> None:
        self.seconds = seconds
        """Seconds each task may be worked on (``task_budget`` task timeouts)."""
        self._idle_total = 0.0
        self._idle_since: float | None = now  # monotonic time since which no claim is in flight; None: some is
        self._live = _Deadlines(is_claimed)  # live claims, on the store's clock
        self._waiting = _Deadlines(is_claimed)  # waiting tasks, on the idle clock

    # -- the idle clock -------------------------------------------------------

    def in_flight(self, claims: int, now: float) -> None:
        """``claims`` are in flight from ``now`` on: the idle clock stops at the first and runs again at none."""
        if claims and self._idle_since is not None:
            self._idle_total += max(now - self._idle_since, 0.0)
            self._idle_since = None
        elif not claims and self._idle_since is None:
            self._idle_since = now

    def _idle_at(self, now: float) -> float:
        """The idle clock at ``now``: seconds so far during which no claim was in flight."""
        since = self._idle_since
        return self._idle_total if since is None else self._idle_total + max(now - since, 0.0)

    @property
    def waiting(self) -> bool:
        """Whether a task may wait with its budget running while no claim is in flight."""
        return bool(self._waiting)

    # -- what tasks spend -----------------------------------------------------

    def claimed(self, claimed: ClaimedTask, now: float) -> None:
        """A claim of the task starts at ``now`` (call before the claim counts as in flight)."""
        if len(claimed.attempts) > 1:  # it was waiting: what of its wait the idle clock counted
            claimed.spent += self._idle_at(now) - claimed.since
        claimed.since = now
        self._live.push(claimed.since + self.seconds - claimed.spent, claimed)

    def ended(self, claimed: ClaimedTask, now: float) -> None:
        """The task's live claim ended at ``now``: it held the task since it started."""
        claimed.spent += max(now - claimed.since, 0.0)

    def waits(self, claimed: ClaimedTask, now: float) -> None:
        """The task waits in the queue from ``now`` on (requeued, or its claim undone)."""
        claimed.since = self._idle_at(now)
        self._waiting.push(claimed.since + self.seconds - claimed.spent, claimed)

    def spent(self, claimed: ClaimedTask, now: float) -> float:
        """Seconds of its budget the task has spent by ``now``."""
        running = now - claimed.since if claimed.live else self._idle_at(now) - claimed.since
        return claimed.spent + max(running, 0.0)

    def exhausted(self, claimed: ClaimedTask) -> bool:
        """Whether the task (between claims) has spent its whole budget."""
        return claimed.spent >= self.seconds

    # -- which runs out next --------------------------------------------------

    def deadline(self) -> float | None:
        """When the next task runs out of budget, on the store's clock; None: none will while nothing changes."""
        live, waiting = self._live.top(), self._waiting.top()
        deadline = None if live is None else live[0]
        if waiting is not None and self._idle_since is not None:
            idle_deadline = self._idle_since + waiting[0] - self._idle_total
            deadline = idle_deadline if deadline is None else min(deadline, idle_deadline)
        return deadline

    def next_over(self, now: float) -> ClaimedTask | None:
        """A task whose budget ran out before ``now`` (a live claim's first, then a waiting one's); else None."""
        live = self._live.top()
        if live is not None and live[0] < now:
            return live[1]
        waiting = self._waiting.top()
        if waiting is not None and self._idle_since is not None and waiting[0] < self._idle_at(now):
            return waiting[1]
        return None
