"""The store's records: one per attempt, one per task claimed and not finished, one per finished task."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..compat import LegacyRollout, Task
from ..models import AttemptTask, ReleaseReason
from .given_back import UNRUN

AttemptOutcome = Literal[
    "in_flight", "timed_out", "unresponsive", "completed", "superseded", "cancelled", "failed", "released"
]
"""How an attempt ended (``in_flight`` while it holds its claim), as ``GET /attempts/{rollout_id}`` shows it."""

GiveUp = Literal["max_claims_exceeded", "task_budget_exceeded"]
"""Why a task was given up: completed empty, marked so in ``metadata["lightning_attempts"]["outcome"]``."""

Complete = Callable[[str, LegacyRollout], None]
"""Stores a task's one result (the store's ``_complete``, which also tells whoever waits for it)."""

FAILURE_LOG_CHARS = 200
"""How much of a worker's ``failure`` text the log and the attempt history keep."""


def excerpt(text: str) -> str:
    """``text``, cut to ``FAILURE_LOG_CHARS`` characters, saying how long it was."""
    return text if len(text) <= FAILURE_LOG_CHARS else text[:FAILURE_LOG_CHARS] + f"... ({len(text)} chars)"


@dataclass(slots=True)
class Attempt:
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
    leased: bool = False
    """Whether its worker said it heartbeats (on the claim or by a first heartbeat): only then does silence
    longer than ``unresponsive_seconds`` end the claim."""
    note: str | None = None
    """How it ended, where its ``outcome`` alone would not say (e.g. what completed the task instead)."""
    release_reason: ReleaseReason | None = None
    """Why its worker gave it back, when it said so."""
    kept_past_timeout: bool = False
    """Whether its claim was kept past ``task_timeout_seconds`` (leased, under a ``task_budget``, its worker heard from
    after the timeout)."""
    worker: str | None = None
    """Who claimed it: ``<name> at <address>`` when its worker names itself (the shim: ``host:pid``), else the
    address its claim came from (an old client); None when the server was not told (the store used directly)."""

    @property
    def unrun(self) -> bool:
        """Whether its worker gave it back without running it: it does not count toward ``max_claims``."""
        return self.release_reason in UNRUN

    def end(self, outcome: AttemptOutcome) -> None:
        self.outcome, self.ended_at = outcome, time.time()


def sequence_of(attempts: Sequence[Attempt], attempt_id: str | None) -> int | None:
    """The claim sequence id of ``attempt_id`` among ``attempts`` (1 for the first); None if never issued."""
    if attempt_id is not None:
        for index, attempt in enumerate(attempts):
            if attempt.attempt_id == attempt_id:
                return index + 1
    return None


@dataclass(slots=True)
class ClaimedTask:
    """A task claimed at least once and not finished: live (a claim holds it) or requeued."""

    task: Task
    first_claimed: float
    """Monotonic time of the task's first claim."""
    attempts: list[Attempt] = field(default_factory=list[Attempt])
    """Every attempt issued for the task; claim sequence id = index + 1."""
    live: bool = False
    """Whether the last attempt still holds its claim (False: requeued)."""
    deadline: float = 0.0
    """When the live claim's age passes ``task_timeout_seconds`` (monotonic)."""
    spent: float = 0.0
    """Seconds of its ``task_budget`` the task spent up to its live claim or its wait (``budget.Budget``)."""
    since: float = 0.0
    """When that claim started (the store's clock) or that wait (the budget's idle clock)."""

    @property
    def rollout_id(self) -> str:
        return self.task.rollout_id

    @property
    def current(self) -> str | None:
        """The attempt holding the live claim; None while the task is requeued."""
        return self.attempts[-1].attempt_id if self.live else None

    @property
    def latest(self) -> str:
        """The live claim's attempt, or the last one issued while the task is requeued."""
        return self.attempts[-1].attempt_id

    def handed_out(self, lease_seconds: float | None) -> AttemptTask:
        """The task as its live claim sees it (no validation: every field is ours)."""
        attempt, sequence = self.attempts[-1], len(self.attempts)
        fields: dict[str, Any] = {**self.task.__dict__}  # dict(model) costs a __getattr__ miss per field
        fields.update(
            last_claim_time=attempt.claimed_at,
            num_claims=sequence,
            attempt_id=attempt.attempt_id,
            claim_sequence_id=sequence,
            lease_seconds=lease_seconds,
        )
        return AttemptTask.model_construct(**fields)

    def counted_claims(self) -> int:
        """How many of its claims count toward ``max_claims``: all but those given back unrun."""
        return sum(not attempt.unrun for attempt in self.attempts)

    def failures(self) -> int:
        """How many of the task's attempts ended ``failed``."""
        return sum(attempt.outcome == "failed" for attempt in self.attempts)


@dataclass(frozen=True, slots=True)
class FinishedTask:
    """What is remembered of a completed or cancelled task."""

    attempts: tuple[Attempt, ...]
    stored: str | None
    """The attempt credited with the stored result (None: cancelled, max claims, or salvaged unverified)."""
    cancelled: bool = False
