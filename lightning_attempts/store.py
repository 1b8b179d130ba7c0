"""AttemptAwareDataStore: upstream's in-memory store, with every claim an attempt."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .compat import LegacyRollout, ServerDataStore, Task
from .models import AttemptRollout, AttemptTask
from .outcomes import STALE_POLICIES, DropReason, StalePolicy, Submission

logger = logging.getLogger(__name__)

DEFAULT_MAX_REMEMBERED = 100_000
"""Finished tasks remembered to answer late results with ``duplicate`` / ``already_completed``."""

Clock = Callable[[], float]
Hook = Callable[[], None]


class _TaskQueue:
    """The tasks waiting for a claim, first in first out, each removable in O(1).

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


AttemptOutcome = Literal[
    "in_flight", "timed_out", "unresponsive", "completed", "superseded", "cancelled", "failed", "released"
]

FAILURE_LOG_CHARS = 200
"""How much of a worker's ``failure`` text the log and the attempt history keep."""


def excerpt(text: str) -> str:
    """``text``, cut to ``FAILURE_LOG_CHARS`` characters, saying how long it was."""
    return text if len(text) <= FAILURE_LOG_CHARS else text[:FAILURE_LOG_CHARS] + f"... ({len(text)} chars)"


@dataclass(slots=True)
class _Attempt:
    """One claim of a task: its id, when it was claimed and last heard of, and how it ended."""

    attempt_id: str
    claimed_at: float
    """Wall-clock time of the claim (for people; deadlines use the monotonic clock)."""
    seen: float
    """Monotonic time of the claim or of its last heartbeat."""
    last_heartbeat_at: float | None = None
    ended_at: float | None = None
    outcome: AttemptOutcome = "in_flight"
    failure: str | None = None
    """Why the attempt failed, as its worker said (truncated), when it did."""

    def end(self, outcome: AttemptOutcome) -> None:
        self.outcome, self.ended_at = outcome, time.time()


@dataclass(slots=True)
class _Claimed:
    """A task claimed at least once and not finished."""

    task: Task
    attempts: list[_Attempt] = field(default_factory=list[_Attempt])
    """Every attempt issued for the task; claim sequence id = index + 1."""
    live: bool = False
    """Whether the last attempt still holds its claim (False: requeued)."""
    deadline: float = 0.0
    """When the live claim's age passes ``task_timeout_seconds`` (monotonic)."""


@dataclass(frozen=True, slots=True)
class _Finished:
    """What is remembered of a completed or cancelled task."""

    attempts: tuple[_Attempt, ...]
    stored: str | None
    """The attempt credited with the stored result (None: cancelled, max claims, or salvaged unverified)."""
    cancelled: bool = False


_ENDED: dict[AttemptOutcome, DropReason] = {"failed": DropReason.FAILED, "released": DropReason.RELEASED}
"""Attempts that ended by their own worker's word: their later results are dropped under either policy."""


def _sequence(attempts: Sequence[_Attempt], attempt_id: str | None) -> int | None:
    if attempt_id is not None:
        for index, attempt in enumerate(attempts):
            if attempt.attempt_id == attempt_id:
                return index + 1
    return None


@dataclass(frozen=True, slots=True)
class Lease:
    """The answer to a heartbeat: whether the attempt still holds its claim, and for how long."""

    rollout_id: str
    attempt_id: str
    reason: DropReason | None = None
    """Why the attempt is no longer current; ``None`` while it is."""
    claim_sequence_id: int | None = None
    lease_seconds: float | None = None
    """Silence after which the claim is requeued (``unresponsive_seconds``); None: no such limit."""
    expires_in: float | None = None
    """Seconds left before the claim reaches ``task_timeout_seconds``."""

    @property
    def current(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ok" if self.current else "stale", "rollout_id": self.rollout_id}
        body["attempt_id"] = self.attempt_id
        if self.current:
            body.update(
                claim_sequence_id=self.claim_sequence_id, lease_seconds=self.lease_seconds, expires_in=self.expires_in
            )
        else:
            body["reason"] = self.reason.value if self.reason is not None else None
        return body


@dataclass(frozen=True, slots=True)
class Release:
    """The answer to ``POST /release``: whether the claim was given back, and what became of the task."""

    rollout_id: str
    attempt_id: str
    reason: DropReason | None = None
    """Why the attempt could not release (it no longer holds the claim); ``None``: released."""
    claim_sequence_id: int | None = None
    gave_up: bool = False
    """The release was the task's ``max_claims``-th claim: the task was completed empty, not requeued."""

    @property
    def released(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "released" if self.released else "stale", "rollout_id": self.rollout_id}
        body["attempt_id"] = self.attempt_id
        if self.released:
            body.update(claim_sequence_id=self.claim_sequence_id, requeued=not self.gave_up)
        else:
            body["reason"] = self.reason.value if self.reason is not None else None
        return body


class AttemptAwareDataStore(ServerDataStore):
    """Upstream's ``ServerDataStore`` in which each claim is an attempt.

    A claim hands out the task with a fresh UUID4 ``attempt_id`` and the next
    ``claim_sequence_id``; a result is stored only if its attempt is valid under the
    ``stale_policy`` (see ``submit``), and at most one result is stored per task.

    Invariants, true between any two calls:

    - every task queued here is in exactly one place: waiting in the queue (never
      claimed, or requeued), claimed by a live attempt, or finished (completed or
      cancelled); nothing is lost and nothing is in two places;
    - a finished task never goes back to the queue or to a claim, and at most one
      result per task is ever stored;
    - claims in flight are kept in claim order, which a fixed timeout makes deadline
      order; with ``unresponsive_seconds`` they are also kept in order of last
      heartbeat. Requeueing pops expired claims from the fronts and costs nothing
      per claim that has not expired.

    Concurrency: every state change is a plain synchronous method with no ``await``
    inside, run on the server's event loop, so no two of them interleave and no
    lock is needed; the ``async`` methods upstream's API requires only wrap them.
    Waiting belongs to the server, which sets three hooks; each only schedules work
    or resolves futures, and never calls back into the store:

    - ``on_claimable()``: a task was queued or requeued (through ``_TaskQueue.put_nowait``);
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
        self._queue = _TaskQueue()
        self.on_deadline: Hook | None = None
        self.on_finished: Callable[[str], None] | None = None
        self._task_queue = self._queue  # pyright: ignore[reportAttributeAccessIssue] # where upstream's add_task puts
        # Live claims, oldest first; a fixed timeout makes that deadline order too.
        self._processing_tasks: OrderedDict[str, Task] = OrderedDict()  # pyright: ignore[reportIncompatibleVariableOverride]
        # The same claims in order of last claim or heartbeat (kept only with unresponsive_seconds).
        self._by_last_seen: OrderedDict[str, None] = OrderedDict()
        self._claimed: dict[str, _Claimed] = {}
        self._finished: OrderedDict[str, _Finished] = OrderedDict()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "claims",
                "claims_undelivered",
                "requeues",
                "requeues_unresponsive",
                "max_claims_exceeded",
                "accepted",
                "accepted_unverified",
                "accepted_unverified_reclaimed",
                "salvaged",
                "duplicates",
                "refused",
                "heartbeats",
                "heartbeats_stale",
                "unauthorized",
                "failed_attempts",
                "failure_retries",
                "failed_stored",
                "releases",
                "releases_stale",
            ),
            0,
        )
        self._drops: dict[str, int] = dict.fromkeys((reason.value for reason in DropReason), 0)

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
            claimed = self._claimed[rollout_id] = _Claimed(task)
        attempt_id = str(uuid.uuid4())
        now = self._clock()
        claimed.attempts.append(_Attempt(attempt_id, time.time(), now))
        claimed.live = True
        claimed.deadline = now + self.task_timeout_seconds
        # Only the queued task is kept; the copy handed out lives as long as its answer.
        self._processing_tasks[rollout_id] = task
        if self.unresponsive_seconds is not None:
            self._by_last_seen[rollout_id] = None
        self._counts["claims"] += 1
        sequence = len(claimed.attempts)
        if sequence > 1:
            logger.info("Task %s re-claimed: attempt %s (claim %d)", rollout_id, attempt_id, sequence)
        if len(self._processing_tasks) == 1 and self.on_deadline is not None:
            self.on_deadline()
        return self._handed_out(claimed)

    def give_back(self, rollout_id: str, attempt_id: str) -> bool:
        """Undo a claim that never reached its poller (its connection closed first).

        The attempt is forgotten, as if never issued, and the task goes back to the
        front of the queue. Nothing happens (False) unless ``attempt_id`` still holds
        the live claim. Counted as ``claims_undelivered``.
        """
        claimed = self._claimed.get(rollout_id)
        if claimed is None or self._current(claimed) != attempt_id:
            return False
        claimed.attempts.pop()
        claimed.live = False
        del self._processing_tasks[rollout_id]
        self._by_last_seen.pop(rollout_id, None)
        if not claimed.attempts:
            del self._claimed[rollout_id]
        self._counts["claims_undelivered"] += 1
        logger.info("Task %s back in the queue: its poller left before attempt %s reached it", rollout_id, attempt_id)
        self._queue.put_nowait(claimed.task, front=True)
        return True

    def _handed_out(self, claimed: _Claimed) -> AttemptTask:
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
        return {rollout_id: self._handed_out(self._claimed[rollout_id]) for rollout_id in self._processing_tasks}

    async def get_next_task(self) -> Task | None:
        """Upstream's API for ``claim``."""
        return self.claim()

    def next_deadline(self) -> float | None:
        """When the next claim expires (timeout or silence), on the store's clock; None: no claim in flight.

        O(1): the claims are kept in deadline order, so it is the earlier of two fronts.
        """
        deadline: float | None = None
        if self._processing_tasks:
            deadline = self._claimed[next(iter(self._processing_tasks))].deadline
        if self.unresponsive_seconds is not None and self._by_last_seen:
            silent = self._claimed[next(iter(self._by_last_seen))].attempts[-1].seen + self.unresponsive_seconds
            deadline = silent if deadline is None else min(deadline, silent)
        return deadline

    def requeue_expired(self) -> int:
        """Requeue every claim past its timeout or silent too long; return how many."""
        processing = self._processing_tasks
        if not processing:
            return 0
        now = self._clock()
        expired = 0
        while processing:
            rollout_id = next(iter(processing))
            claimed = self._claimed[rollout_id]
            if claimed.deadline >= now:
                break
            self._expire(rollout_id, claimed, "timed_out")
            expired += 1
        if self.unresponsive_seconds is not None:
            silent_since = now - self.unresponsive_seconds
            while self._by_last_seen:
                rollout_id = next(iter(self._by_last_seen))
                claimed = self._claimed[rollout_id]
                if claimed.attempts[-1].seen >= silent_since:
                    break
                self._expire(rollout_id, claimed, "unresponsive")
                expired += 1
        return expired

    def _expire(self, rollout_id: str, claimed: _Claimed, outcome: AttemptOutcome) -> bool:
        """End the live claim; requeue the task (True), or complete it empty after ``max_claims`` claims."""
        self._end_claim(rollout_id, claimed)
        attempt = claimed.attempts[-1]
        attempt.end(outcome)
        claims = len(claimed.attempts)
        if outcome == "released":
            self._counts["releases"] += 1
            why = "was released by its worker"
        elif outcome == "unresponsive":
            self._counts["requeues_unresponsive"] += 1
            why = f"had no heartbeat for {self.unresponsive_seconds}s"
        else:
            why = f"passed its {self.task_timeout_seconds}s timeout"
        if self.max_claims is not None and claims >= self.max_claims:
            self._give_up(rollout_id, claimed)
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
        self._counts["requeues"] += 1
        logger.warning("Requeuing task %s: attempt %s (claim %d) %s", rollout_id, attempt.attempt_id, claims, why)
        return True

    def _end_claim(self, rollout_id: str, claimed: _Claimed) -> None:
        """The live claim no longer holds the task (its attempt's outcome is set by the caller)."""
        del self._processing_tasks[rollout_id]
        self._by_last_seen.pop(rollout_id, None)
        claimed.live = False

    def _give_up(self, rollout_id: str, claimed: _Claimed) -> None:
        """Complete a task with an empty result, so that a trainer waiting for it can go on."""
        del self._claimed[rollout_id]
        self._remember(rollout_id, _Finished(tuple(claimed.attempts), None))
        outcome = {"outcome": "max_claims_exceeded", "claims": len(claimed.attempts)}
        self._counts["max_claims_exceeded"] += 1
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
        if claimed is not None and claimed.live and attempt_id in (None, self._current(claimed)):
            self._expire(task.rollout_id, claimed, "timed_out")

    # -- leases ---------------------------------------------------------------

    def heartbeat(self, rollout_id: str, attempt_id: str) -> Lease:
        """Extend the claim of ``attempt_id`` if it still holds it; say whether it does.

        A heartbeat restarts the ``unresponsive_seconds`` window; ``task_timeout_seconds``
        stays the hard limit on a claim's age. A stale heartbeat changes nothing.
        """
        claimed = self._claimed.get(rollout_id)
        if claimed is None or not claimed.live or self._current(claimed) != attempt_id:
            self._counts["heartbeats_stale"] += 1
            return Lease(rollout_id, attempt_id, self._why_not_current(rollout_id, attempt_id, claimed))
        now = self._clock()
        attempt = claimed.attempts[-1]
        attempt.seen, attempt.last_heartbeat_at = now, time.time()
        if self.unresponsive_seconds is not None:
            self._by_last_seen.move_to_end(rollout_id)
        self._counts["heartbeats"] += 1
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
        if claimed is None or not claimed.live or self._current(claimed) != attempt_id:
            self._counts["releases_stale"] += 1
            return Release(rollout_id, attempt_id, self._why_not_current(rollout_id, attempt_id, claimed))
        requeued = self._expire(rollout_id, claimed, "released")
        return Release(rollout_id, attempt_id, None, len(claimed.attempts), gave_up=not requeued)

    def _why_not_current(self, rollout_id: str, attempt_id: str, claimed: _Claimed | None) -> DropReason:
        if claimed is not None:
            for attempt in claimed.attempts:
                if attempt.attempt_id == attempt_id:
                    return _ENDED.get(attempt.outcome, DropReason.SUPERSEDED)
            return DropReason.UNKNOWN_ATTEMPT
        finished = self._finished.get(rollout_id)
        if finished is None:
            return DropReason.UNKNOWN_ATTEMPT if rollout_id in self._queue else DropReason.UNKNOWN_ROLLOUT
        if finished.cancelled:
            return DropReason.CANCELLED
        if _sequence(finished.attempts, attempt_id) is None:
            return DropReason.UNKNOWN_ATTEMPT
        return DropReason.ALREADY_COMPLETED

    # -- submissions ----------------------------------------------------------

    def submit(self, rollout: LegacyRollout, attempt_id: str | None = None, *, failed: bool = False) -> Submission:
        """Store ``rollout`` if ``attempt_id`` may complete its task; say what happened.

        The outcome follows the table in the README: the live claim's attempt (or an
        old client's submission without an id while a claim is live) is stored; an
        earlier attempt is dropped as ``superseded`` under ``"reject"`` and stored
        under ``"salvage"``; a retry of the stored attempt is a ``duplicate``. A drop
        or refusal changes nothing but the counters.

        ``failed`` says the result is a failure (the server's ``is_failed_result``).
        With ``retry_failed`` set, a failed result of the live attempt ends it
        ``failed`` and requeues the task (``retrying``) while the task has had fewer
        than ``retry_failed`` failed attempts and fewer than ``max_claims`` claims;
        after that it is stored, marked failed in its metadata. A later result of a
        failed or released attempt is dropped under either policy, and salvage never
        stores a failed result of an attempt that no longer holds the claim. With
        ``retry_failed=0`` ``failed`` is ignored: the result is stored as upstream does.
        """
        rollout_id = rollout.rollout_id
        if attempt_id is None and self.require_attempt_id:
            self._counts["refused"] += 1
            logger.warning("Refused result for %s: no attempt_id, and this server requires one", rollout_id)
            return Submission("refused", rollout_id, None)
        claimed = self._claimed.get(rollout_id)
        if claimed is None:
            return self._submit_unclaimed(rollout_id, attempt_id)
        attempts = claimed.attempts
        sequence = _sequence(attempts, attempt_id)
        if attempt_id is not None and sequence is None:
            return self._drop(DropReason.UNKNOWN_ATTEMPT, rollout_id, attempt_id, attempts, self._current(claimed))
        current = self._current(claimed)
        if current is not None and attempt_id in (None, current):
            if failed and self.retry_failed:
                return self._failed(rollout, claimed, attempt_id, current)
            return self._accept(rollout, claimed, attempt_id, credited=current)
        latest = current or attempts[-1].attempt_id
        if sequence is not None and (ended := _ENDED.get(attempts[sequence - 1].outcome)) is not None:
            return self._drop(ended, rollout_id, attempt_id, attempts, latest)
        if self.stale_policy == "salvage" and not (failed and self.retry_failed):
            return self._accept(rollout, claimed, attempt_id, credited=attempt_id)
        return self._drop(DropReason.SUPERSEDED, rollout_id, attempt_id, attempts, latest)

    async def store_rollout(self, rollout: LegacyRollout) -> Submission:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Upstream's API for ``submit``, reading the attempt id from the rollout itself."""
        return self.submit(rollout, getattr(rollout, "attempt_id", None))

    @staticmethod
    def _current(claimed: _Claimed) -> str | None:
        return claimed.attempts[-1].attempt_id if claimed.live else None

    def _submit_unclaimed(self, rollout_id: str, attempt_id: str | None) -> Submission:
        finished = self._finished.get(rollout_id)
        if finished is None:
            # A task still waiting for its first claim never issued any attempt.
            reason = DropReason.UNKNOWN_ATTEMPT if rollout_id in self._queue else DropReason.UNKNOWN_ROLLOUT
            return self._drop(reason, rollout_id, attempt_id, (), None)
        attempts, stored = finished.attempts, finished.stored
        if finished.cancelled:
            return self._drop(DropReason.CANCELLED, rollout_id, attempt_id, attempts, None)
        if attempt_id is not None and attempt_id == stored:
            self._counts["duplicates"] += 1
            sequence = _sequence(attempts, attempt_id)
            return Submission("duplicate", rollout_id, attempt_id, sequence, stored, sequence)
        if attempt_id is not None and _sequence(attempts, attempt_id) is None:
            return self._drop(DropReason.UNKNOWN_ATTEMPT, rollout_id, attempt_id, attempts, stored)
        return self._drop(DropReason.ALREADY_COMPLETED, rollout_id, attempt_id, attempts, stored)

    def _accept(
        self, rollout: LegacyRollout, claimed: _Claimed, attempt_id: str | None, *, credited: str | None
    ) -> Submission:
        rollout_id = rollout.rollout_id
        attempts = claimed.attempts
        live = self._current(claimed)
        salvaged = credited != live
        for attempt in attempts:
            if attempt.attempt_id == credited:
                attempt.outcome = "completed"  # a salvaged attempt keeps the time it ended
                attempt.ended_at = attempt.ended_at or time.time()
            elif attempt.attempt_id == live:
                attempt.end("superseded")
        del self._claimed[rollout_id]
        self._processing_tasks.pop(rollout_id, None)
        self._by_last_seen.pop(rollout_id, None)
        self._queue.discard(rollout_id)
        self._remember(rollout_id, _Finished(tuple(attempts), credited))
        self._complete(rollout_id, rollout)
        self._counts["accepted"] += 1
        if attempt_id is None:
            self._counts["accepted_unverified"] += 1
            if len(attempts) > 1:
                self._counts["accepted_unverified_reclaimed"] += 1
                logger.warning(
                    "Accepted a result without attempt id for %s, claimed %d times: it may be a superseded "
                    "attempt's. Workers on AttemptAwareClient (LIGHTNING_ATTEMPTS_INSTALL=1) carry attempt ids; "
                    "then set require_attempt_id=True",
                    rollout_id,
                    len(attempts),
                )
        if salvaged:
            self._counts["salvaged"] += 1
            logger.warning(
                "Salvaged late result for %s from attempt %s (claim %s of %d)",
                rollout_id,
                attempt_id,
                _sequence(attempts, attempt_id),
                len(attempts),
            )
        sequence = _sequence(attempts, credited)
        return Submission("ok", rollout_id, attempt_id, sequence, credited, sequence, verified=attempt_id is not None)

    def _failed(self, rollout: LegacyRollout, claimed: _Claimed, attempt_id: str | None, current: str) -> Submission:
        """The live attempt's result is a failure: requeue the task for another attempt, or store it marked."""
        rollout_id = rollout.rollout_id
        attempts = claimed.attempts
        attempt, claims = attempts[-1], len(attempts)
        failure = getattr(rollout, "failure", None)
        if failure:
            attempt.failure = excerpt(failure)
        failures = sum(earlier.outcome == "failed" for earlier in attempts)  # this one is not marked yet
        self._counts["failed_attempts"] += 1
        retry = failures < self.retry_failed and (self.max_claims is None or claims < self.max_claims)
        logger.warning(
            "Attempt %s of %s failed (claim %d, failure %d, retry_failed=%d): %s%s",
            current,
            rollout_id,
            claims,
            failures + 1,
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
            self._counts["failed_stored"] += 1
            return submission
        attempt.end("failed")
        self._end_claim(rollout_id, claimed)
        self._queue.put_nowait(claimed.task)
        self._counts["failure_retries"] += 1
        return Submission("retrying", rollout_id, attempt_id, claims, current, claims)

    def _drop(
        self,
        reason: DropReason,
        rollout_id: str,
        attempt_id: str | None,
        attempts: Sequence[_Attempt],
        current: str | None,
    ) -> Submission:
        self._drops[reason.value] += 1
        sequence, current_sequence = _sequence(attempts, attempt_id), _sequence(attempts, current)
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

    def _remember(self, rollout_id: str, finished: _Finished) -> None:
        self._finished[rollout_id] = finished
        if len(self._finished) > self.max_remembered:
            self._finished.popitem(last=False)

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
            self._processing_tasks.pop(rollout_id, None)
            self._by_last_seen.pop(rollout_id, None)
            if claimed is not None and claimed.live:
                claimed.attempts[-1].end("cancelled")
            attempts = tuple(claimed.attempts) if claimed is not None else ()
            self._remember(rollout_id, _Finished(attempts, None, cancelled=True))
            cancelled.append(rollout_id)
        if cancelled:
            logger.info("Cancelled %d pending tasks", len(cancelled))
            if self.on_finished is not None:
                for rollout_id in cancelled:
                    self.on_finished(rollout_id)
        return cancelled

    def count_unauthorized(self) -> None:
        """Count a request the server refused for lack of its API key (it changed nothing else)."""
        self._counts["unauthorized"] += 1

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
        dropped = dict(self._drops)
        return {
            **self._counts,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "claims_in_flight": len(self._processing_tasks),
            "queued": len(self._queue),
            "completed_unretrieved": len(self._completed_rollouts),
            "finished_remembered": len(self._finished),
        }

    def history(self, rollout_id: str) -> list[dict[str, Any]] | None:
        """Each claim of a task (id, times, outcome) while the task is live or remembered; else None."""
        claimed = self._claimed.get(rollout_id)
        finished = self._finished.get(rollout_id)
        if claimed is not None:
            attempts: Sequence[_Attempt] = claimed.attempts
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
