"""A submitted result carried to its outcome: the table's rule for its situation, then what the rule says to do."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from ..compat import LegacyRollout
from .answers import Submission
from .counters import Counters
from .records import Attempt, ClaimedTask, Complete, excerpt, sequence_of
from .table import Action, DropReason, Result, StalePolicy, outcomes
from .tasks import Situation, TaskBook

logger = logging.getLogger("lightning_attempts.store")


class Submissions:
    """Each submission looked up in the outcome table (``table.RULES``) and carried out on a ``TaskBook``.

    A drop, a refusal or a duplicate changes nothing but the counters; an accepted result
    finishes its task; a failed result under ``retry_failed`` may requeue it instead.
    """

    def __init__(
        self,
        book: TaskBook,
        counters: Counters,
        complete: Complete,
        *,
        stale_policy: StalePolicy,
        require_attempt_id: bool,
        retry_failed: int,
        max_claims: int | None,
    ) -> None:
        self._book = book
        self._counters = counters
        self._complete = complete
        self._outcomes = outcomes(stale_policy)
        self._require_attempt_id = require_attempt_id
        self._retry_failed = retry_failed
        self._max_claims = max_claims

    def submit(self, rollout: LegacyRollout, attempt_id: str | None, *, failed: bool) -> Submission:
        """What becomes of ``rollout``, submitted with ``attempt_id`` (``failed``: the server judged it a failure)."""
        rollout_id = rollout.rollout_id
        found = self._book.situation(rollout_id, attempt_id)
        result = self._judge(found.claimed) if failed and self._retry_failed else Result.ORDINARY
        outcome = self._outcomes[found.state, found.carries, result, self._require_attempt_id]
        action, claimed = outcome.action, found.claimed
        if action is Action.DROP:
            assert outcome.reason is not None
            return self._drop(outcome.reason, rollout_id, attempt_id, found)
        if action is Action.REFUSE:
            self._counters.add("refused")
            logger.warning("Refused result for %s: no attempt_id, and this server requires one", rollout_id)
            return Submission("refused", rollout_id, None)
        if action is Action.DUPLICATE:
            assert found.finished is not None
            self._counters.add("duplicates")
            sequence = sequence_of(found.finished.attempts, attempt_id)
            return Submission("duplicate", rollout_id, attempt_id, sequence, found.finished.stored, sequence)
        assert claimed is not None  # every other action takes a claimed task's result
        if action is Action.SALVAGE:
            return self._accept(rollout, claimed, attempt_id, credited=attempt_id)
        if action is Action.ACCEPT:
            return self._accept(rollout, claimed, attempt_id, credited=claimed.current)
        return self._failed(rollout, claimed, attempt_id, retry=action is Action.RETRY)

    def reason_against(self, rollout_id: str, attempt_id: str) -> DropReason:
        """Why an attempt that does not hold its claim may not heartbeat or release: what its result would meet."""
        found = self._book.situation(rollout_id, attempt_id)
        reason = self._outcomes[found.state, found.carries, Result.ORDINARY, False].reason
        return reason or DropReason.ALREADY_COMPLETED  # the stored attempt: its task is complete too

    def _judge(self, claimed: ClaimedTask | None) -> Result:
        """A failed result, under ``retry_failed``: may its task be tried again?"""
        if claimed is None:
            return Result.FAILED_FINAL
        claims = len(claimed.attempts)
        if claimed.failures() < self._retry_failed and (self._max_claims is None or claims < self._max_claims):
            return Result.FAILED_RETRY
        return Result.FAILED_FINAL

    def _accept(
        self, rollout: LegacyRollout, claimed: ClaimedTask, attempt_id: str | None, *, credited: str | None
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
        if credited != live:
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
            self._retry_failed,
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
        self._book.end_claim(claimed, "failed")
        self._book.requeue(claimed)
        self._counters.add("failure_retries")
        return Submission("retrying", rollout_id, attempt_id, claims, current, claims)

    def _drop(self, reason: DropReason, rollout_id: str, attempt_id: str | None, found: Situation) -> Submission:
        """Count and log a drop; the current attempt named is the live (or stored) one, else the latest issued."""
        attempts: Sequence[Attempt] = ()
        current: str | None = None
        if found.claimed is not None:
            attempts = found.claimed.attempts
            current = found.claimed.current if reason is DropReason.UNKNOWN_ATTEMPT else found.claimed.latest
        elif found.finished is not None:
            attempts = found.finished.attempts
            current = None if found.finished.cancelled else found.finished.stored
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
