"""Every way an attempt ends, in one place: by its result (README's outcome table), or without one.

A submitted result ends in three steps, read top to bottom:

1. ``situation``: where its task stands and what its attempt id is to the task (``table.TaskState``,
   ``table.Carries``), and whether it is a failure ``retry_failed`` may retry (``table.Result``);
2. the rule: ``table.RULES``, compiled by policy, gives the ``Action`` for that situation;
3. the effect: ``EFFECTS`` maps each action to the method of ``Transitions`` that carries it out.

A claim ends without a result by ``end`` (a timeout, silence, a release: the task is requeued,
or given up after ``max_claims`` claims) or by ``cancel``. ``TaskBook`` makes the moves; what to
move, and what to count and log, is decided here. Nothing here awaits: every method runs
to completion on the server's event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..compat import LegacyRollout
from ..models import AttemptRollout, ReleaseReason
from ..options import Options
from .answers import Submission
from .counters import Counters
from .records import Attempt, AttemptOutcome, ClaimedTask, Complete, FinishedTask, GiveUp, excerpt, sequence_of
from .table import Action, Carries, DropReason, Key, Outcome, Result, TaskState, outcomes
from .tasks import TaskBook

logger = logging.getLogger("lightning_attempts.store")

SHOWN_ID_CHARACTERS = 8
"""Of a live attempt's id, what a WARNING or INFO line shows: the id lets its holder call the LLM proxy.

The whole id is logged at DEBUG."""


def shortened(attempt_id: str | None) -> str | None:
    """``attempt_id``'s first characters, enough to tell attempts apart in a log and too few to use it."""
    if attempt_id is None or len(attempt_id) <= SHOWN_ID_CHARACTERS:
        return attempt_id
    return attempt_id[:SHOWN_ID_CHARACTERS] + "..."


_STORED = frozenset({Action.ACCEPT, Action.SALVAGE})
"""What the outcome table does with an ordinary result of a live attempt."""
COMPLETED = "completed"
"""Why the attempt whose result is stored is no longer live (its result would be a ``duplicate``)."""

_ENDED_BY_WORKER: dict[AttemptOutcome, Carries] = {"failed": Carries.FAILED, "released": Carries.RELEASED}
"""Attempts that ended by their own worker's word: their later results are dropped under either policy."""


@dataclass(frozen=True, slots=True)
class Situation:
    """Where a task stands, what an attempt id is to it, and its record (claimed or finished) if any."""

    state: TaskState
    carries: Carries
    claimed: ClaimedTask | None = None
    finished: FinishedTask | None = None


def situation(book: TaskBook, rollout_id: str, attempt_id: str | None) -> Situation:
    """Where the task stands in ``book``, and what ``attempt_id`` is to it."""
    claimed = book.claimed.get(rollout_id)
    if claimed is not None:
        state = TaskState.CLAIMED if claimed.live else TaskState.REQUEUED
        if attempt_id is None:
            return Situation(state, Carries.NONE, claimed)
        if attempt_id == claimed.current:
            return Situation(state, Carries.LIVE, claimed)
        return Situation(state, _carried(claimed.attempts, attempt_id), claimed)
    finished = book.finished.get(rollout_id)
    if finished is None:
        state = TaskState.QUEUED if rollout_id in book.queue else TaskState.UNKNOWN
        return Situation(state, Carries.NONE if attempt_id is None else Carries.UNISSUED)
    state = TaskState.CANCELLED if finished.cancelled else TaskState.COMPLETED
    if attempt_id is None:
        return Situation(state, Carries.NONE, finished=finished)
    if attempt_id == finished.stored:
        return Situation(state, Carries.STORED, finished=finished)
    return Situation(state, _carried(finished.attempts, attempt_id), finished=finished)


def _carried(attempts: Sequence[Attempt], attempt_id: str) -> Carries:
    """What an attempt id other than the live or stored one is to a task with these ``attempts``."""
    sequence = sequence_of(attempts, attempt_id)
    if sequence is None:
        return Carries.UNISSUED
    return _ENDED_BY_WORKER.get(attempts[sequence - 1].outcome, Carries.EARLIER)


@dataclass(frozen=True, slots=True)
class Submitted:
    """A result being carried out: what was submitted, in what situation, and the rule's outcome."""

    rollout: LegacyRollout
    attempt_id: str | None
    found: Situation
    outcome: Outcome

    @property
    def rollout_id(self) -> str:
        return self.rollout.rollout_id

    @property
    def claimed(self) -> ClaimedTask:
        """The claimed task whose result this is (every action that stores or retries has one)."""
        assert self.found.claimed is not None
        return self.found.claimed


class Transitions:
    """Carries out results by the outcome table, and ends claims that end without one, on a ``TaskBook``.

    A drop, a refusal or a duplicate changes nothing but the counters; an accepted result
    finishes its task; a failed result under ``retry_failed`` may requeue it instead.
    """

    def __init__(self, book: TaskBook, counters: Counters, complete: Complete, options: Options) -> None:
        self._book = book
        self._counters = counters
        self._complete = complete
        self._options = options
        self._outcomes: Mapping[Key, Outcome] = outcomes(options.stale_policy)

    # -- results --------------------------------------------------------------

    def submit(self, rollout: LegacyRollout, attempt_id: str | None, *, failed: bool) -> Submission:
        """What becomes of ``rollout``, submitted with ``attempt_id`` (``failed``: the server judged it a failure)."""
        found = situation(self._book, rollout.rollout_id, attempt_id)
        result = self._judge(found.claimed) if failed and self._options.retry_failed else Result.ORDINARY
        outcome = self._outcomes[found.state, found.carries, result, self._options.require_attempt_id]
        return EFFECTS[outcome.action](self, Submitted(rollout, attempt_id, found, outcome))

    def reason_against(self, rollout_id: str, attempt_id: str) -> DropReason:
        """Why an attempt that does not hold its claim may not heartbeat or release: what its result would meet."""
        found = situation(self._book, rollout_id, attempt_id)
        reason = self._outcomes[found.state, found.carries, Result.ORDINARY, False].reason
        return reason or DropReason.ALREADY_COMPLETED  # the stored attempt: its task is complete too

    def liveness(self, rollout_id: str, attempt_id: str) -> str | None:
        """None while an ordinary result of the attempt would be stored now (accepted, or salvaged); else why
        not: the reason its result would be dropped for, or ``completed`` when its own result is the stored one."""
        found = situation(self._book, rollout_id, attempt_id)
        outcome = self._outcomes[found.state, found.carries, Result.ORDINARY, self._options.require_attempt_id]
        if outcome.action in _STORED:
            return None
        return COMPLETED if outcome.reason is None else outcome.reason.value

    def _judge(self, claimed: ClaimedTask | None) -> Result:
        """A failed result, under ``retry_failed``: may its task be tried again?"""
        if claimed is None:
            return Result.FAILED_FINAL
        max_claims, budget = self._options.max_claims, self._book.budget
        if claimed.failures() >= self._options.retry_failed:
            return Result.FAILED_FINAL
        if max_claims is not None and claimed.counted_claims() >= max_claims:
            return Result.FAILED_FINAL
        if budget is not None and budget.spent(claimed, self._options.clock()) >= budget.seconds:
            return Result.FAILED_FINAL
        return Result.FAILED_RETRY

    def accept(self, submitted: Submitted) -> Submission:
        """Store the result, credited to the live claim's attempt.

        A result without an attempt id (an old worker's) is credited to the live claim only when it
        is the task's one claim; otherwise it may be any claim's, and is credited to none: the live
        attempt is superseded, and its own result, should it come, is dropped as ``already_completed``.
        """
        claimed = submitted.claimed
        verified = submitted.attempt_id is not None or len(claimed.attempts) == 1
        return self._store(submitted.rollout, claimed, submitted.attempt_id, claimed.current if verified else None)

    def salvage(self, submitted: Submitted) -> Submission:
        """Store the result, credited to the earlier attempt that submitted it; the live claim is superseded."""
        return self._store(submitted.rollout, submitted.claimed, submitted.attempt_id, submitted.attempt_id)

    def _store(
        self, rollout: LegacyRollout, claimed: ClaimedTask, attempt_id: str | None, credited: str | None
    ) -> Submission:
        """Store ``rollout``, credited to ``credited``: the live claim's attempt, or a salvaged earlier one."""
        rollout_id = rollout.rollout_id
        attempts = claimed.attempts
        live = claimed.current
        for attempt in attempts:
            if attempt.attempt_id == credited:
                attempt.outcome = "completed"  # a salvaged attempt keeps the time it ended
                attempt.ended_at = attempt.ended_at or time.time()
            elif attempt.attempt_id == live:
                attempt.end("superseded")
                if credited is None:
                    attempt.note = "the task was completed by a result without an attempt id (an old worker's)"
        self._book.complete(claimed, credited)
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
        if credited is not None and credited != live:
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

    def store_failed(self, submitted: Submitted) -> Submission:
        """The live attempt's failed result, with no retry left: stored, marked failed in its metadata."""
        rollout, claimed = submitted.rollout, submitted.claimed
        attempt, claims = self._failed(submitted, retry=False)
        metadata = {**(rollout.metadata or {}), "lightning_attempts": {"outcome": "failed", "claims": claims}}
        marked = rollout.model_copy(update={"metadata": metadata})
        stored = self._store(marked, claimed, submitted.attempt_id, attempt.attempt_id)
        attempt.outcome = "failed"
        self._counters.add("failed_stored")
        return stored

    def retry(self, submitted: Submitted) -> Submission:
        """The live attempt's failed result, with a retry left: the attempt ends ``failed``, the task is requeued."""
        claimed = submitted.claimed
        attempt, claims = self._failed(submitted, retry=True)
        self._book.end_claim(claimed, "failed")
        self._book.requeue(claimed)
        self._counters.add("failure_retries")
        return Submission("retrying", submitted.rollout_id, submitted.attempt_id, claims, attempt.attempt_id, claims)

    def _failed(self, submitted: Submitted, *, retry: bool) -> tuple[Attempt, int]:
        """Note and log the live attempt's failure; its attempt and the task's claims so far."""
        claimed = submitted.claimed
        attempt, claims = claimed.attempts[-1], len(claimed.attempts)
        failure = getattr(submitted.rollout, "failure", None)
        if failure:
            attempt.failure = excerpt(failure)
        self._counters.add("failed_attempts")
        logger.warning(
            "Attempt %s of %s failed (claim %d, failure %d, retry_failed=%d): %s%s",
            attempt.attempt_id,
            submitted.rollout_id,
            claims,
            claimed.failures() + 1,  # this one is not marked yet
            self._options.retry_failed,
            "requeuing the task" if retry else "storing the failed result",
            f"; the worker says: {attempt.failure!r}" if attempt.failure else "",
        )
        return attempt, claims

    def duplicate(self, submitted: Submitted) -> Submission:
        """A retry of the stored attempt: nothing changes."""
        finished = submitted.found.finished
        assert finished is not None
        self._counters.add("duplicates")
        sequence = sequence_of(finished.attempts, submitted.attempt_id)
        return Submission("duplicate", submitted.rollout_id, submitted.attempt_id, sequence, finished.stored, sequence)

    def refuse(self, submitted: Submitted) -> Submission:
        """No attempt id where one is required: nothing changes."""
        self._counters.add("refused")
        logger.warning("Refused result for %s: no attempt_id, and this server requires one", submitted.rollout_id)
        return Submission("refused", submitted.rollout_id, None)

    def drop(self, submitted: Submitted) -> Submission:
        """Count and log a drop; the current attempt named is the live (or stored) one, else the latest issued."""
        reason, found, attempt_id = submitted.outcome.reason, submitted.found, submitted.attempt_id
        assert reason is not None
        attempts: Sequence[Attempt] = ()
        current: str | None = None
        live = found.claimed.current if found.claimed is not None else None  # its id is a capability: not shown
        if found.claimed is not None:
            attempts = found.claimed.attempts
            current = found.claimed.current if reason is DropReason.UNKNOWN_ATTEMPT else found.claimed.latest
        elif found.finished is not None:
            attempts = found.finished.attempts
            current = None if found.finished.cancelled else found.finished.stored
        self._counters.dropped(reason)
        sequence, current_sequence = sequence_of(attempts, attempt_id), sequence_of(attempts, current)
        shown = shortened(current) if live is not None and current == live else current
        known = [_attempt("submitted", attempt_id, sequence) if attempt_id else "submitted without an attempt id"]
        if shown is not None:
            known.append(_attempt("current", shown, current_sequence))
        logger.warning("Dropped result for %s: %s (%s)", submitted.rollout_id, reason.value, "; ".join(known))
        if live is not None:
            logger.debug("Dropped result for %s: the live attempt is %s", submitted.rollout_id, live)
        return Submission("dropped", submitted.rollout_id, attempt_id, sequence, current, current_sequence, reason)

    # -- claims that end without a result -------------------------------------

    def expire(self, now: float) -> int:
        """End every claim past its timeout or silent too long at ``now``, and give up every task past its
        budget; return how many."""
        expired = 0
        while True:
            if (found := self._book.in_flight.next_expired(now)) is not None:
                self.end(*found)
            elif (over := self._book.next_over_budget(now)) is not None:
                self._over_budget(over)
            else:
                return expired
            expired += 1

    def end(self, claimed: ClaimedTask, outcome: AttemptOutcome, reason: ReleaseReason | None = None) -> bool:
        """End the live claim with ``outcome``; requeue the task (True), or give it up after ``max_claims`` claims or
        when it has spent its budget. ``reason``: why its worker released it, if it said (``given_back``)."""
        self._book.end_claim(claimed, outcome)
        attempt = claimed.attempts[-1]
        attempt.release_reason = reason
        attempt_id, claims, unrun = attempt.attempt_id, len(claimed.attempts), attempt.unrun
        if outcome == "released":
            self._counters.add("releases")
            if unrun:
                self._counters.add("releases_unrun")
            why = "was released by its worker" + (f" ({reason})" if reason else "")
        elif outcome == "unresponsive":
            self._counters.add("requeues_unresponsive")
            why = f"had no heartbeat for {self._options.unresponsive_seconds}s"
        else:
            why = f"passed its {self._options.task_timeout_seconds}s timeout"
        rollout_id, max_claims, counted = claimed.rollout_id, self._options.max_claims, claimed.counted_claims()
        if max_claims is not None and counted >= max_claims and not unrun:  # unrun: says nothing of the task
            self._give_up(claimed, "max_claims_exceeded")
            logger.warning(
                "Giving up on task %s: attempt %s (claim %d of at most %d%s) %s; completed empty, marked "
                "max_claims_exceeded",
                rollout_id,
                attempt_id,
                counted,
                max_claims,
                f", besides {claims - counted} given back unrun" if claims > counted else "",
                why,
            )
            return False
        budget = self._book.budget
        if budget is not None and budget.exhausted(claimed):
            self._over_budget(claimed)
            return False
        self._book.requeue(claimed)
        if outcome == "released":  # a worker's deliberate act, not a fault (given_back logs a release unrun)
            if not unrun:
                logger.info("Requeuing task %s: attempt %s (claim %d) %s", rollout_id, attempt_id, claims, why)
            return True
        self._counters.add("requeues")
        logger.warning("Requeuing task %s: attempt %s (claim %d) %s", rollout_id, attempt_id, claims, why)
        return True

    def _over_budget(self, claimed: ClaimedTask) -> None:
        """The task was worked on for ``task_budget`` task timeouts (``budget.Budget``) unfinished: give it up.

        A live claim ends ``timed_out``: its worker, alive or not, is told so at its next heartbeat,
        and its result, if it ever comes, is dropped as ``already_completed``.
        """
        live = claimed.current
        if live is not None:
            self._book.end_claim(claimed, "timed_out")
            claimed.attempts[-1].note = "the task ran out of its task_budget"
        self._give_up(claimed, "task_budget_exceeded")
        logger.warning(
            "Giving up on task %s: worked on for %.0fs unfinished (task_budget=%g task timeouts), claimed %d "
            "times%s; completed empty, marked task_budget_exceeded",
            claimed.rollout_id,
            claimed.spent,
            self._options.task_budget,
            len(claimed.attempts),
            f", attempt {live} still working" if live is not None else "",
        )

    def _give_up(self, claimed: ClaimedTask, why: GiveUp) -> None:
        """Complete a task with an empty result marked ``why``, so that a trainer waiting for it can go on."""
        rollout_id = claimed.rollout_id
        self._book.complete(claimed, None)
        outcome = {"outcome": why, "claims": len(claimed.attempts)}
        self._counters.add(why)
        self._counters.add("given_up")
        empty: LegacyRollout = AttemptRollout(
            rollout_id=rollout_id, task=claimed.task, final_reward=None, metadata={"lightning_attempts": outcome}
        )
        self._complete(rollout_id, empty)

    def cancel(self, rollout_ids: Iterable[str]) -> list[str]:
        """Finish the given tasks as cancelled (a live claim ends ``cancelled``); return those cancelled.

        Finished and unknown ids are skipped.
        """
        cancelled: list[str] = []
        for rollout_id in rollout_ids:
            claimed = self._book.claimed.get(rollout_id)
            if claimed is not None and claimed.live:
                self._book.end_claim(claimed, "cancelled")
            if self._book.cancel(rollout_id):
                cancelled.append(rollout_id)
        return cancelled


EFFECTS: Mapping[Action, Callable[[Transitions, Submitted], Submission]] = {
    Action.ACCEPT: Transitions.accept,
    Action.SALVAGE: Transitions.salvage,
    Action.STORE_FAILED: Transitions.store_failed,
    Action.RETRY: Transitions.retry,
    Action.DUPLICATE: Transitions.duplicate,
    Action.DROP: Transitions.drop,
    Action.REFUSE: Transitions.refuse,
}
"""What each action of the outcome table does: the step after the rule."""


def _attempt(which: str, attempt_id: str, sequence: int | None) -> str:
    """``which attempt ID, claim N`` for a drop's log line; the claim only when the attempt was issued."""
    return f"{which} attempt {attempt_id}" + ("" if sequence is None else f", claim {sequence}")
