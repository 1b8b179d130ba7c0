"""AttemptAwareDataStore: upstream's in-memory store, with every claim an attempt, as a synchronous state machine."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

from ..compat import LegacyRollout, ServerDataStore, Task
from ..models import AttemptRollout, AttemptTask
from .answers import Lease, Release, Submission
from .claim_index import ClaimIndex
from .counters import Counters
from .finished import DEFAULT_MAX_REMEMBERED, FinishedTasks
from .queue import Hook, TaskQueue
from .records import Attempt, AttemptOutcome, ClaimedTask, FinishedTask, excerpt, sequence_of
from .table import STALE_POLICIES, Action, Carries, DropReason, Result, StalePolicy, TaskState, outcomes

logger = logging.getLogger("lightning_attempts.store")

Clock = Callable[[], float]

_ENDED_BY_WORKER: dict[AttemptOutcome, Carries] = {"failed": Carries.FAILED, "released": Carries.RELEASED}
"""Attempts that ended by their own worker's word: their later results are dropped under either policy."""


class AttemptAwareDataStore(ServerDataStore):
    """Upstream's ``ServerDataStore`` in which each claim is an attempt.

    A claim hands out the task with a fresh UUID4 ``attempt_id`` and the next
    ``claim_sequence_id``; a result is stored only if its attempt is valid under the
    ``stale_policy`` (``table.RULES``, README's outcome table), and at most one result
    is stored per task.

    Its parts: the waiting tasks (``TaskQueue``), the record of every task claimed and
    not finished (``ClaimedTask``, with its ``Attempt`` records), the live claims in
    their two expiry orders (``ClaimIndex``), the memory of finished tasks
    (``FinishedTasks``), the outcome table (``table``) and the ``Counters``.

    Invariants, true between any two calls:

    - every task queued here is in exactly one place: waiting in the queue (never
      claimed, or requeued), claimed by a live attempt, or finished (completed or
      cancelled); nothing is lost and nothing is in two places;
    - a finished task never goes back to the queue or to a claim, and at most one
      result per task is ever stored;
    - every live claim is in the claim index, and only live claims are; requeueing
      pops expired claims from its fronts and costs nothing per claim that has not
      expired.

    Concurrency: every state change is a plain synchronous method with no ``await``
    inside, run on the server's event loop, so no two of them interleave and no
    lock is needed; the ``async`` methods upstream's API requires only wrap them.
    Waiting belongs to the server, which sets three hooks; each only schedules work
    or resolves futures, and never calls back into the store:

    - ``on_claimable()``: a task was queued or requeued (through ``TaskQueue.put_nowait``);
    - ``on_deadline()``: a claim was made while none was in flight, so ``next_deadline()``
      went from ``None`` to a time;
    - ``on_finished(rollout_id)``: a task's result was stored (``_complete``) or it
      was cancelled.
    """

    def __init__(
        self,
        *,
        task_timeout_seconds: float = 300.0,
        stale_policy: StalePolicy = "reject",
        require_attempt_id: bool = False,
        unresponsive_seconds: float | None = None,
        max_claims: int | None = None,
        retry_failed: int = 0,
        max_remembered: int = DEFAULT_MAX_REMEMBERED,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__()
        if retry_failed < 0:
            raise ValueError("retry_failed must not be negative")
        if stale_policy not in STALE_POLICIES:
            raise ValueError(f"stale_policy must be one of {STALE_POLICIES}, not {stale_policy!r}")
        if max_remembered < 0:
            raise ValueError("max_remembered must not be negative")
        if max_claims is not None and max_claims < 1:
            raise ValueError("max_claims must be at least 1")
        if unresponsive_seconds is not None and unresponsive_seconds <= 0:
            raise ValueError("unresponsive_seconds must be positive")
        self.task_timeout_seconds = task_timeout_seconds
        self.unresponsive_seconds = unresponsive_seconds
        self.max_claims = max_claims
        self.retry_failed = retry_failed
        self.stale_policy: StalePolicy = stale_policy
        self.require_attempt_id = require_attempt_id
        self.max_remembered = max_remembered
        self._clock = clock
        self._queue = TaskQueue()
        self._task_queue = self._queue  # pyright: ignore[reportAttributeAccessIssue] # where upstream's add_task puts
        self._claimed: dict[str, ClaimedTask] = {}
        self._in_flight = ClaimIndex(unresponsive_seconds)
        self._finished = FinishedTasks(max_remembered)
        self._outcomes = outcomes(stale_policy)
        self._counters = Counters()
        self.on_deadline: Hook | None = None
        self.on_finished: Callable[[str], None] | None = None

    @property
    def on_claimable(self) -> Hook | None:
        """Called (with no argument) whenever a task becomes claimable."""
        return self._queue.on_put

    @on_claimable.setter
    def on_claimable(self, hook: Hook | None) -> None:
        self._queue.on_put = hook

    # -- claims ---------------------------------------------------------------

    def claim(self) -> AttemptTask | None:
        """Hand out the next queued task as a new attempt, or ``None`` if none waits."""
        try:
            task = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        rollout_id = task.rollout_id
        claimed = self._claimed.get(rollout_id)
        if claimed is None:
            claimed = self._claimed[rollout_id] = ClaimedTask(task)
        attempt_id = str(uuid.uuid4())
        now = self._clock()
        claimed.attempts.append(Attempt(attempt_id, time.time(), now))
        claimed.live = True
        claimed.deadline = now + self.task_timeout_seconds
        self._in_flight.add(claimed)
        self._counters.add("claims")
        sequence = len(claimed.attempts)
        if sequence > 1:
            logger.info("Task %s re-claimed: attempt %s (claim %d)", rollout_id, attempt_id, sequence)
        if len(self._in_flight) == 1 and self.on_deadline is not None:
            self.on_deadline()
        return self._handed_out(claimed)

    def give_back(self, rollout_id: str, attempt_id: str) -> bool:
        """Undo a claim that never reached its poller (its connection closed first).

        The attempt is forgotten, as if never issued, and the task goes back to the
        front of the queue. Nothing happens (False) unless ``attempt_id`` still holds
        the live claim. Counted as ``claims_undelivered``.
        """
        claimed = self._claimed.get(rollout_id)
        if claimed is None or claimed.current != attempt_id:
            return False
        claimed.attempts.pop()
        claimed.live = False
        self._in_flight.discard(rollout_id)
        if not claimed.attempts:
            del self._claimed[rollout_id]
        self._counters.add("claims_undelivered")
        logger.info("Task %s back in the queue: its poller left before attempt %s reached it", rollout_id, attempt_id)
        self._queue.put_nowait(claimed.task, front=True)
        return True

    def _handed_out(self, claimed: ClaimedTask) -> AttemptTask:
        """The task as its live claim sees it (no validation: every field is ours)."""
        attempt, sequence = claimed.attempts[-1], len(claimed.attempts)
        fields: dict[str, Any] = {**claimed.task.__dict__}  # dict(model) costs a __getattr__ miss per field
        fields.update(
            last_claim_time=attempt.claimed_at,
            num_claims=sequence,
            attempt_id=attempt.attempt_id,
            claim_sequence_id=sequence,
            lease_seconds=self.unresponsive_seconds,
        )
        return AttemptTask.model_construct(**fields)

    def get_processing_tasks(self) -> dict[str, Task]:
        """Upstream's API: the live claims, as handed out."""
        return {claimed.rollout_id: self._handed_out(claimed) for claimed in self._in_flight}

    async def get_next_task(self) -> Task | None:
        """Upstream's API for ``claim``."""
        return self.claim()

    # -- requeues -------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the next claim expires (timeout or silence), on the store's clock; None: no claim in flight. O(1)."""
        return self._in_flight.next_deadline()

    def requeue_expired(self) -> int:
        """Requeue every claim past its timeout or silent too long; return how many."""
        if not len(self._in_flight):
            return 0
        now = self._clock()
        expired = 0
        while (found := self._in_flight.next_expired(now)) is not None:
            self._expire(*found)
            expired += 1
        return expired

    def _expire(self, claimed: ClaimedTask, outcome: AttemptOutcome) -> bool:
        """End the live claim; requeue the task (True), or complete it empty after ``max_claims`` claims."""
        self._end_claim(claimed)
        attempt = claimed.attempts[-1]
        attempt.end(outcome)
        claims = len(claimed.attempts)
        if outcome == "released":
            self._counters.add("releases")
            why = "was released by its worker"
        elif outcome == "unresponsive":
            self._counters.add("requeues_unresponsive")
            why = f"had no heartbeat for {self.unresponsive_seconds}s"
        else:
            why = f"passed its {self.task_timeout_seconds}s timeout"
        rollout_id = claimed.rollout_id
        if self.max_claims is not None and claims >= self.max_claims:
            self._give_up(claimed)
            logger.warning(
                "Giving up on task %s: attempt %s (claim %d of at most %d) %s",
                rollout_id,
                attempt.attempt_id,
                claims,
                self.max_claims,
                why,
            )
            return False
        self._queue.put_nowait(claimed.task)
        if outcome == "released":  # a worker's deliberate act, not a fault
            logger.info("Requeuing task %s: attempt %s (claim %d) %s", rollout_id, attempt.attempt_id, claims, why)
            return True
        self._counters.add("requeues")
        logger.warning("Requeuing task %s: attempt %s (claim %d) %s", rollout_id, attempt.attempt_id, claims, why)
        return True

    def _end_claim(self, claimed: ClaimedTask) -> None:
        """The live claim no longer holds the task (its attempt's outcome is set by the caller)."""
        self._in_flight.discard(claimed.rollout_id)
        claimed.live = False

    def _give_up(self, claimed: ClaimedTask) -> None:
        """Complete a task with an empty result, so that a trainer waiting for it can go on."""
        rollout_id = claimed.rollout_id
        del self._claimed[rollout_id]
        self._finished.remember(rollout_id, FinishedTask(tuple(claimed.attempts), None))
        outcome = {"outcome": "max_claims_exceeded", "claims": len(claimed.attempts)}
        self._counters.add("max_claims_exceeded")
        self._complete(
            rollout_id,
            AttemptRollout(
                rollout_id=rollout_id, task=claimed.task, final_reward=None, metadata={"lightning_attempts": outcome}
            ),
        )

    def _complete(self, rollout_id: str, rollout: LegacyRollout) -> None:
        """Store a task's one result (every stored result goes through here)."""
        self._completed_rollouts[rollout_id] = rollout
        if self.on_finished is not None:
            self.on_finished(rollout_id)

    async def requeue_task(self, task: Task) -> None:
        """Requeue ``task``'s claim now, if it is still the live one (upstream's API)."""
        claimed = self._claimed.get(task.rollout_id)
        attempt_id = getattr(task, "attempt_id", None)
        if claimed is not None and claimed.live and attempt_id in (None, claimed.current):
            self._expire(claimed, "timed_out")

    # -- leases ---------------------------------------------------------------

    def heartbeat(self, rollout_id: str, attempt_id: str) -> Lease:
        """Extend the claim of ``attempt_id`` if it still holds it; say whether it does.

        A heartbeat restarts the ``unresponsive_seconds`` window; ``task_timeout_seconds``
        stays the hard limit on a claim's age. A stale heartbeat changes nothing.
        """
        claimed = self._claimed.get(rollout_id)
        if claimed is None or claimed.current != attempt_id:
            self._counters.add("heartbeats_stale")
            return Lease(rollout_id, attempt_id, self._why_not_current(rollout_id, attempt_id, claimed))
        now = self._clock()
        attempt = claimed.attempts[-1]
        attempt.seen, attempt.last_heartbeat_at = now, time.time()
        self._in_flight.heard_from(rollout_id)
        self._counters.add("heartbeats")
        return Lease(
            rollout_id, attempt_id, None, len(claimed.attempts), self.unresponsive_seconds, claimed.deadline - now
        )

    def release(self, rollout_id: str, attempt_id: str) -> Release:
        """Give back the claim of ``attempt_id`` if it holds it: the task is requeued at once.

        The attempt ends ``released`` and a later result of it is dropped (reason
        ``released``). A release is a claim like any other for ``max_claims`` (a task
        every worker gives back is as hopeless as one that always times out: releasing
        its last allowed claim completes it empty), and it never counts toward
        ``retry_failed``. An attempt that no longer holds the claim changes nothing.
        """
        claimed = self._claimed.get(rollout_id)
        if claimed is None or claimed.current != attempt_id:
            self._counters.add("releases_stale")
            return Release(rollout_id, attempt_id, self._why_not_current(rollout_id, attempt_id, claimed))
        requeued = self._expire(claimed, "released")
        return Release(rollout_id, attempt_id, None, len(claimed.attempts), gave_up=not requeued)

    def _why_not_current(self, rollout_id: str, attempt_id: str, claimed: ClaimedTask | None) -> DropReason:
        """Why an attempt that does not hold its claim may not heartbeat or release: what its result would meet."""
        finished = None if claimed is not None else self._finished.get(rollout_id)
        state, carries = self._situation(rollout_id, attempt_id, claimed, finished)
        reason = self._outcomes[state, carries, Result.ORDINARY, False].reason
        return reason or DropReason.ALREADY_COMPLETED  # the stored attempt's task is complete too

    # -- submissions ----------------------------------------------------------

    def submit(self, rollout: LegacyRollout, attempt_id: str | None = None, *, failed: bool = False) -> Submission:
        """Store ``rollout`` if ``attempt_id`` may complete its task; say what happened.

        The outcome is ``table.RULES``' (README's table): the situation (the task's
        state, what the attempt id is to it, whether the result is a retryable failure,
        whether attempt ids are required) is looked up under the ``stale_policy``. A
        drop or refusal changes nothing but the counters.

        ``failed`` says the result is a failure (the server's ``is_failed_result``).
        With ``retry_failed`` set, a failed result of the live attempt ends it
        ``failed`` and requeues the task (``retrying``) while the task has had fewer
        than ``retry_failed`` failed attempts and fewer than ``max_claims`` claims;
        after that it is stored, marked failed in its metadata. With ``retry_failed=0``
        ``failed`` is ignored: the result is stored as upstream does.
        """
        rollout_id = rollout.rollout_id
        claimed = self._claimed.get(rollout_id)
        finished = None if claimed is not None else self._finished.get(rollout_id)
        state, carries = self._situation(rollout_id, attempt_id, claimed, finished)
        result = self._judge(claimed) if failed and self.retry_failed else Result.ORDINARY
        outcome = self._outcomes[state, carries, result, self.require_attempt_id]
        action = outcome.action
        if action is Action.DROP:
            assert outcome.reason is not None
            return self._drop(outcome.reason, rollout_id, attempt_id, claimed, finished)
        if action is Action.REFUSE:
            self._counters.add("refused")
            logger.warning("Refused result for %s: no attempt_id, and this server requires one", rollout_id)
            return Submission("refused", rollout_id, None)
        if action is Action.DUPLICATE:
            assert finished is not None
            self._counters.add("duplicates")
            sequence = sequence_of(finished.attempts, attempt_id)
            return Submission("duplicate", rollout_id, attempt_id, sequence, finished.stored, sequence)
        assert claimed is not None  # every other action takes the claimed task's result
        if action is Action.SALVAGE:
            return self._accept(rollout, claimed, attempt_id, credited=attempt_id)
        if action is Action.ACCEPT:
            return self._accept(rollout, claimed, attempt_id, credited=claimed.current)
        return self._failed(rollout, claimed, attempt_id, retry=action is Action.RETRY)

    async def store_rollout(self, rollout: LegacyRollout) -> Submission:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Upstream's API for ``submit``, reading the attempt id from the rollout itself."""
        return self.submit(rollout, getattr(rollout, "attempt_id", None))

    def _situation(
        self, rollout_id: str, attempt_id: str | None, claimed: ClaimedTask | None, finished: FinishedTask | None
    ) -> tuple[TaskState, Carries]:
        """Where the task stands, and what ``attempt_id`` is to it."""
        if claimed is not None:
            state = TaskState.CLAIMED if claimed.live else TaskState.REQUEUED
            if attempt_id is None:
                return state, Carries.NONE
            if attempt_id == claimed.current:
                return state, Carries.LIVE
            return state, _carried(claimed.attempts, attempt_id)
        if finished is None:
            state = TaskState.QUEUED if rollout_id in self._queue else TaskState.UNKNOWN
            return state, Carries.NONE if attempt_id is None else Carries.UNISSUED
        state = TaskState.CANCELLED if finished.cancelled else TaskState.COMPLETED
        if attempt_id is None:
            return state, Carries.NONE
        if attempt_id == finished.stored:
            return state, Carries.STORED
        return state, _carried(finished.attempts, attempt_id)

    def _judge(self, claimed: ClaimedTask | None) -> Result:
        """A failed result, under ``retry_failed``: may its task be tried again?"""
        if claimed is None:
            return Result.FAILED_FINAL
        claims = len(claimed.attempts)
        if claimed.failures() < self.retry_failed and (self.max_claims is None or claims < self.max_claims):
            return Result.FAILED_RETRY
        return Result.FAILED_FINAL

    def _accept(
        self, rollout: LegacyRollout, claimed: ClaimedTask, attempt_id: str | None, *, credited: str | None
    ) -> Submission:
        rollout_id = rollout.rollout_id
        attempts = claimed.attempts
        live = claimed.current
        salvaged = credited != live
        for attempt in attempts:
            if attempt.attempt_id == credited:
                attempt.outcome = "completed"  # a salvaged attempt keeps the time it ended
                attempt.ended_at = attempt.ended_at or time.time()
            elif attempt.attempt_id == live:
                attempt.end("superseded")
        del self._claimed[rollout_id]
        self._in_flight.discard(rollout_id)
        self._queue.discard(rollout_id)
        self._finished.remember(rollout_id, FinishedTask(tuple(attempts), credited))
        self._complete(rollout_id, rollout)
        self._counters.add("accepted")
        if attempt_id is None:
            self._counters.add("accepted_unverified")
            if len(attempts) > 1:
                self._counters.add("accepted_unverified_reclaimed")
                logger.warning(
                    "Accepted a result without attempt id for %s, claimed %d times: it may be a superseded "
                    "attempt's. Workers on AttemptAwareClient (LIGHTNING_ATTEMPTS_INSTALL=1) carry attempt ids; "
                    "then set require_attempt_id=True",
                    rollout_id,
                    len(attempts),
                )
        if salvaged:
            self._counters.add("salvaged")
            logger.warning(
                "Salvaged late result for %s from attempt %s (claim %s of %d)",
                rollout_id,
                attempt_id,
                sequence_of(attempts, attempt_id),
                len(attempts),
            )
        sequence = sequence_of(attempts, credited)
        return Submission("ok", rollout_id, attempt_id, sequence, credited, sequence, verified=attempt_id is not None)

    def _failed(
        self, rollout: LegacyRollout, claimed: ClaimedTask, attempt_id: str | None, *, retry: bool
    ) -> Submission:
        """The live attempt's result is a failure: requeue the task for another attempt, or store it marked."""
        rollout_id = rollout.rollout_id
        attempt, claims = claimed.attempts[-1], len(claimed.attempts)
        current = attempt.attempt_id
        failure = getattr(rollout, "failure", None)
        if failure:
            attempt.failure = excerpt(failure)
        self._counters.add("failed_attempts")
        logger.warning(
            "Attempt %s of %s failed (claim %d, failure %d, retry_failed=%d): %s%s",
            current,
            rollout_id,
            claims,
            claimed.failures() + 1,  # this one is not marked yet
            self.retry_failed,
            "requeuing the task" if retry else "storing the failed result",
            f"; the worker says: {attempt.failure!r}" if attempt.failure else "",
        )
        if not retry:
            metadata = {**(rollout.metadata or {}), "lightning_attempts": {"outcome": "failed", "claims": claims}}
            submission = self._accept(
                rollout.model_copy(update={"metadata": metadata}), claimed, attempt_id, credited=current
            )
            attempt.outcome = "failed"
            self._counters.add("failed_stored")
            return submission
        attempt.end("failed")
        self._end_claim(claimed)
        self._queue.put_nowait(claimed.task)
        self._counters.add("failure_retries")
        return Submission("retrying", rollout_id, attempt_id, claims, current, claims)

    def _drop(
        self,
        reason: DropReason,
        rollout_id: str,
        attempt_id: str | None,
        claimed: ClaimedTask | None,
        finished: FinishedTask | None,
    ) -> Submission:
        """Count and log a drop; the current attempt named is the live (or stored) one, else the latest issued."""
        attempts: Sequence[Attempt] = ()
        current: str | None = None
        if claimed is not None:
            attempts = claimed.attempts
            current = claimed.current if reason is DropReason.UNKNOWN_ATTEMPT else claimed.latest
        elif finished is not None:
            attempts = finished.attempts
            current = None if finished.cancelled else finished.stored
        self._counters.dropped(reason)
        sequence, current_sequence = sequence_of(attempts, attempt_id), sequence_of(attempts, current)
        logger.warning(
            "Dropped result for %s: %s (submitted attempt %s, claim %s; current attempt %s, claim %s)",
            rollout_id,
            reason.value,
            attempt_id,
            sequence,
            current,
            current_sequence,
        )
        return Submission("dropped", rollout_id, attempt_id, sequence, current, current_sequence, reason)

    # -- cancellation ---------------------------------------------------------

    def cancel(self, rollout_ids: Iterable[str] | None = None) -> list[str]:
        """Cancel the given tasks (default: every queued or claimed one); return those cancelled.

        Later results of a cancelled task are dropped with reason ``cancelled``.
        Finished and unknown ids are skipped.
        """
        if rollout_ids is None:
            rollout_ids = [*self._queue, *(rid for rid in self._claimed if rid not in self._queue)]
        cancelled: list[str] = []
        for rollout_id in rollout_ids:
            queued = self._queue.discard(rollout_id)
            claimed = self._claimed.pop(rollout_id, None)
            if queued is None and claimed is None:
                continue
            self._in_flight.discard(rollout_id)
            if claimed is not None and claimed.live:
                claimed.attempts[-1].end("cancelled")
            attempts = tuple(claimed.attempts) if claimed is not None else ()
            self._finished.remember(rollout_id, FinishedTask(attempts, None, cancelled=True))
            cancelled.append(rollout_id)
        if cancelled:
            logger.info("Cancelled %d pending tasks", len(cancelled))
            if self.on_finished is not None:
                for rollout_id in cancelled:
                    self.on_finished(rollout_id)
        return cancelled

    def count_unauthorized(self) -> None:
        """Count a request the server refused for lack of its API key (it changed nothing else)."""
        self._counters.add("unauthorized")

    # -- completion -----------------------------------------------------------

    def queued(self) -> int:
        """How many tasks wait in the queue for a claim."""
        return len(self._queue)

    def unfinished(self, rollout_ids: Iterable[str]) -> set[str]:
        """Those of ``rollout_ids`` still queued or claimed (neither completed nor cancelled).

        Raises ``ValueError`` for an id this store neither holds nor remembers, as
        LightningStore's ``wait_for_rollouts`` does.
        """
        pending: set[str] = set()
        for rollout_id in rollout_ids:
            if rollout_id in self._claimed or rollout_id in self._queue:
                pending.add(rollout_id)
            elif rollout_id not in self._completed_rollouts and rollout_id not in self._finished:
                raise ValueError(f"Rollout ID '{rollout_id}' is neither live, stored nor remembered.")
        return pending

    def stored(self, rollout_ids: Iterable[str]) -> list[LegacyRollout]:
        """The stored, not yet retrieved results among ``rollout_ids`` (left in place)."""
        completed = self._completed_rollouts
        return [completed[rollout_id] for rollout_id in dict.fromkeys(rollout_ids) if rollout_id in completed]

    # -- inspection -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters by outcome and drop reason, and the sizes of the live state."""
        return {
            **self._counters.snapshot(),
            "claims_in_flight": len(self._in_flight),
            "queued": len(self._queue),
            "completed_unretrieved": len(self._completed_rollouts),
            "finished_remembered": len(self._finished),
        }

    def history(self, rollout_id: str) -> list[dict[str, Any]] | None:
        """Each claim of a task (id, times, outcome) while the task is live or remembered; else None."""
        claimed = self._claimed.get(rollout_id)
        finished = self._finished.get(rollout_id)
        if claimed is not None:
            attempts: Sequence[Attempt] = claimed.attempts
        elif finished is not None:
            attempts = finished.attempts
        elif rollout_id in self._queue:
            attempts = ()
        else:
            return None
        history: list[dict[str, Any]] = []
        for sequence, attempt in enumerate(attempts, 1):
            entry = {"claim_sequence_id": sequence, **asdict(attempt)}
            del entry["seen"]  # monotonic, meaningless outside this process
            history.append(entry)
        return history


def _carried(attempts: Sequence[Attempt], attempt_id: str) -> Carries:
    """What an attempt id other than the live or stored one is to a task with these ``attempts``."""
    sequence = sequence_of(attempts, attempt_id)
    if sequence is None:
        return Carries.UNISSUED
    return _ENDED_BY_WORKER.get(attempts[sequence - 1].outcome, Carries.EARLIER)
