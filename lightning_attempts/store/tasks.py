"""Where every task is: waiting for a claim, claimed (live or requeued), or finished; and the moves between.

``TaskBook`` keeps the records and moves a task from place to place; it decides nothing:
what to do (claim, requeue, store, drop, give up) is the store's (``datastore``,
``transitions``). Every move is synchronous and keeps these invariants:

- a task queued here is in exactly one place: waiting in the queue (never claimed, or
  requeued), claimed by a live attempt, or finished (completed or cancelled); a claimed
  task that is not live is requeued, hence also in the queue;
- a finished task never goes back to the queue or to a claim;
- every live claim is in the claim index, and only live claims are.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ..options import Clock
from .budget import Budget
from .claim_index import ClaimIndex
from .finished import FinishedTasks
from .queue import TaskQueue
from .records import Attempt, AttemptOutcome, ClaimedTask, FinishedTask


class TaskBook:
    """The queue, the records of claimed tasks, the index of live claims and the memory of finished tasks."""

    def __init__(
        self, silence_limit: float | None, max_remembered: int, clock: Clock, budget: float | None = None
    ) -> None:
        self.queue = TaskQueue()
        self.claimed: dict[str, ClaimedTask] = {}
        """Tasks claimed at least once and not finished (live or requeued), in order of first claim."""
        self._clock = clock
        self.budget = None if budget is None else Budget(budget, self._holds, clock())
        """What each task spent of its ``task_budget`` (seconds worked on); None: no budget."""
        self.in_flight = ClaimIndex(silence_limit, keep_leased=budget is not None)
        self.finished = FinishedTasks(max_remembered)

    def _holds(self, claimed: ClaimedTask) -> bool:
        """Whether ``claimed`` is still its task's record (the task claimed and not finished)."""
        return self.claimed.get(claimed.rollout_id) is claimed

    def _in_flight_changed(self) -> None:
        if self.budget is not None:
            self.budget.in_flight(len(self.in_flight), self._clock())

    # -- moves ----------------------------------------------------------------

    def claim(self, now: float, deadline: float, *, leased: bool, worker: str | None = None) -> ClaimedTask | None:
        """The next waiting task, claimed by a new attempt of ``worker`` until ``deadline``; None if none waits."""
        if not self.queue:
            return None
        task = self.queue.get_nowait()
        claimed = self.claimed.get(task.rollout_id)
        if claimed is None:
            claimed = self.claimed[task.rollout_id] = ClaimedTask(task, now)
        claimed.attempts.append(Attempt(str(uuid.uuid4()), time.time(), now, leased=leased, worker=worker))
        claimed.live = True
        claimed.deadline = deadline
        if self.budget is not None:
            self.budget.claimed(claimed, now)
        self.in_flight.add(claimed)
        self._in_flight_changed()
        return claimed

    def unclaim(self, claimed: ClaimedTask) -> None:
        """Undo the live claim, as if never made: its attempt is forgotten, the task waits first in line."""
        claimed.attempts.pop()
        claimed.live = False
        self.in_flight.discard(claimed.rollout_id)
        self._in_flight_changed()
        if not claimed.attempts:
            del self.claimed[claimed.rollout_id]
        elif self.budget is not None:  # the undone claim held it for no time
            self.budget.waits(claimed, self._clock())
        self.queue.put_nowait(claimed.task, front=True)

    def end_claim(self, claimed: ClaimedTask, outcome: AttemptOutcome) -> None:
        """The live claim's attempt ends with ``outcome`` and no longer holds the task."""
        claimed.attempts[-1].end(outcome)
        self.in_flight.discard(claimed.rollout_id)
        claimed.live = False
        if self.budget is not None:
            self.budget.ended(claimed, self._clock())
        self._in_flight_changed()

    def requeue(self, claimed: ClaimedTask) -> None:
        """A task whose claim ended waits, last in line, for another attempt."""
        if self.budget is not None:
            self.budget.waits(claimed, self._clock())
        self.queue.put_nowait(claimed.task)

    def complete(self, claimed: ClaimedTask, credited: str | None) -> None:
        """The task is finished with a result credited to ``credited`` (None: no attempt's, e.g. given up)."""
        rollout_id = claimed.rollout_id
        del self.claimed[rollout_id]
        self.in_flight.discard(rollout_id)
        self._in_flight_changed()
        self.queue.discard(rollout_id)
        self.finished.remember(rollout_id, FinishedTask(tuple(claimed.attempts), credited))

    def cancel(self, rollout_id: str) -> bool:
        """Finish the task as cancelled if it waits or is claimed (its live claim ended first); False if it is finished
        or unknown."""
        queued = self.queue.discard(rollout_id)
        claimed = self.claimed.pop(rollout_id, None)
        if queued is None and claimed is None:
            return False
        self.in_flight.discard(rollout_id)
        self._in_flight_changed()
        attempts = tuple(claimed.attempts) if claimed is not None else ()
        self.finished.remember(rollout_id, FinishedTask(attempts, None, cancelled=True))
        return True

    # -- reads ----------------------------------------------------------------

    def pending(self) -> list[str]:
        """Every task waiting or claimed, queue order first."""
        return [*self.queue, *(rid for rid in self.claimed if rid not in self.queue)]

    def budget_deadline(self) -> float | None:
        """When the next task runs out of its budget; None: no budget, or none will while nothing changes."""
        return None if self.budget is None else self.budget.deadline()

    def next_over_budget(self, now: float) -> ClaimedTask | None:
        """A claimed, unfinished task (live or requeued) whose budget ran out before ``now``; else None."""
        return None if self.budget is None else self.budget.next_over(now)

    def is_pending(self, rollout_id: str) -> bool:
        """Whether the task waits or is claimed (neither completed nor cancelled)."""
        return rollout_id in self.claimed or rollout_id in self.queue

    def outcome_of(self, rollout_id: str, attempt_id: str) -> AttemptOutcome | None:
        """How an attempt of a live or remembered task ended (``history``'s ``outcome``); None if never issued."""
        claimed = self.claimed.get(rollout_id)
        finished = self.finished.get(rollout_id)
        attempts: Sequence[Attempt] = claimed.attempts if claimed else finished.attempts if finished else ()
        return next((attempt.outcome for attempt in attempts if attempt.attempt_id == attempt_id), None)

    def history(self, rollout_id: str) -> list[dict[str, Any]] | None:
        """Each claim of a task (id, times, outcome) while the task is live or remembered; else None."""
        claimed = self.claimed.get(rollout_id)
        finished = self.finished.get(rollout_id)
        if claimed is not None:
            attempts: Sequence[Attempt] = claimed.attempts
        elif finished is not None:
            attempts = finished.attempts
        elif rollout_id in self.queue:
            attempts = ()
        else:
            return None
        history: list[dict[str, Any]] = []
        for sequence, attempt in enumerate(attempts, 1):
            entry = {"claim_sequence_id": sequence, **asdict(attempt)}
            del entry["seen"]  # monotonic, meaningless outside this process
            history.append(entry)
        return history
