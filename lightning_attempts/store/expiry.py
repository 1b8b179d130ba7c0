"""Claims that end without a result: past their timeout, silent too long, or given back; and giving up on a task."""

from __future__ import annotations

import logging

from ..compat import LegacyRollout
from ..models import AttemptRollout
from .counters import Counters
from .records import AttemptOutcome, ClaimedTask, Complete
from .tasks import TaskBook

logger = logging.getLogger("lightning_attempts.store")


class Expiry:
    """Ends live claims that expired or were released: the task is requeued, or completed empty after ``max_claims``.

    Expired claims are found at the two fronts of the claim index, so that requeueing costs
    nothing per claim that has not expired.
    """

    def __init__(
        self,
        book: TaskBook,
        counters: Counters,
        complete: Complete,
        *,
        task_timeout_seconds: float,
        unresponsive_seconds: float | None,
        max_claims: int | None,
    ) -> None:
        self._book = book
        self._counters = counters
        self._complete = complete
        self._task_timeout_seconds = task_timeout_seconds
        self._unresponsive_seconds = unresponsive_seconds
        self._max_claims = max_claims

    def requeue_expired(self, now: float) -> int:
        """End every claim past its timeout or silent too long at ``now``; return how many."""
        expired = 0
        while (found := self._book.in_flight.next_expired(now)) is not None:
            self.end(*found)
            expired += 1
        return expired

    def end(self, claimed: ClaimedTask, outcome: AttemptOutcome) -> bool:
        """End the live claim with ``outcome``; requeue the task (True), or give it up after ``max_claims`` claims."""
        self._book.end_claim(claimed, outcome)
        attempt_id, claims = claimed.latest, len(claimed.attempts)
        if outcome == "released":
            self._counters.add("releases")
            why = "was released by its worker"
        elif outcome == "unresponsive":
            self._counters.add("requeues_unresponsive")
            why = f"had no heartbeat for {self._unresponsive_seconds}s"
        else:
            why = f"passed its {self._task_timeout_seconds}s timeout"
        rollout_id = claimed.rollout_id
        if self._max_claims is not None and claims >= self._max_claims:
            self._give_up(claimed)
            logger.warning(
                "Giving up on task %s: attempt %s (claim %d of at most %d) %s",
                rollout_id,
                attempt_id,
                claims,
                self._max_claims,
                why,
            )
            return False
        self._book.requeue(claimed)
        if outcome == "released":  # a worker's deliberate act, not a fault
            logger.info("Requeuing task %s: attempt %s (claim %d) %s", rollout_id, attempt_id, claims, why)
            return True
        self._counters.add("requeues")
        logger.warning("Requeuing task %s: attempt %s (claim %d) %s", rollout_id, attempt_id, claims, why)
        return True

    def _give_up(self, claimed: ClaimedTask) -> None:
        """Complete a task with an empty result, so that a trainer waiting for it can go on."""
        rollout_id = claimed.rollout_id
        self._book.complete(claimed, None)
        outcome = {"outcome": "max_claims_exceeded", "claims": len(claimed.attempts)}
        self._counters.add("max_claims_exceeded")
        empty: LegacyRollout = AttemptRollout(
            rollout_id=rollout_id, task=claimed.task, final_reward=None, metadata={"lightning_attempts": outcome}
        )
        self._complete(rollout_id, empty)
