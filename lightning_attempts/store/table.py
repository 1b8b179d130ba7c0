"""What becomes of a submitted result: README's outcome table, as data.

A submission is classified by three things the store knows and one option:

- ``TaskState``: where its task stands (unknown, queued and never claimed, claimed by a
  live attempt, requeued, completed, cancelled);
- ``Carries``: what its attempt id is to that task (none, the live claim's, the stored
  result's, an earlier attempt's, one that ended ``failed`` or ``released``, or one never
  issued for the task);
- ``Result``: whether it is a failed result that ``retry_failed`` may retry
  (``ORDINARY`` whenever ``retry_failed`` is 0);
- and whether the server requires attempt ids.

``RULES`` maps those to an ``Outcome`` under each ``stale_policy``, one rule per row of the
README's table, in the same order and with the same words; the first rule that matches
decides (a test reads README.md and checks it against these rules, row by row).
``outcomes(policy)`` compiles them into a dict over every combination, so that the store
looks an outcome up in O(1).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from ..options import StalePolicy


class DropReason(str, Enum):
    """Why a submitted result was not stored (the ``reason`` of a 409 answer)."""

    SUPERSEDED = "superseded"
    """A later claim of the task exists, or the task was requeued after this attempt."""
    ALREADY_COMPLETED = "already_completed"
    """Another attempt's result is already stored for the task."""
    CANCELLED = "cancelled"
    """The task was cancelled (``cancel_pending``) before a result arrived."""
    UNKNOWN_ROLLOUT = "unknown_rollout"
    """No such task: never queued here, or finished so long ago that it was forgotten."""
    UNKNOWN_ATTEMPT = "unknown_attempt"
    """The task exists but never handed out this attempt id."""
    FAILED = "failed"
    """This attempt already posted a failed result, and the task was requeued for another attempt."""
    RELEASED = "released"
    """This attempt gave its claim back (``POST /release``), and the task was requeued."""


class TaskState(Enum):
    """Where the submission's task stands."""

    UNKNOWN = "unknown"
    QUEUED = "queued, never claimed"
    CLAIMED = "claimed by a live attempt"
    REQUEUED = "claimed before, requeued"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Carries(Enum):
    """What the submission's attempt id is to its task."""

    NONE = "no attempt id (an old client)"
    LIVE = "the attempt holding the live claim"
    STORED = "the attempt credited with the stored result"
    EARLIER = "an earlier attempt, ended by a timeout, silence or a later claim"
    FAILED = "an attempt that ended failed"
    RELEASED = "an attempt that released its claim"
    UNISSUED = "an id never issued for this task"


class Result(Enum):
    """What the submitted result is, as far as ``retry_failed`` is concerned."""

    ORDINARY = "ordinary"
    FAILED_RETRY = "failed, retry_failed left"
    FAILED_FINAL = "failed, no retry_failed left"


class Action(Enum):
    """What the store does with the submission."""

    ACCEPT = "accept"
    """Store it, credited to the live claim."""
    SALVAGE = "salvage"
    """Store it, credited to the submitted (earlier) attempt; the live claim is superseded."""
    STORE_FAILED = "store failed"
    """Store it credited to the live claim, marked ``{"outcome": "failed", "claims": n}``."""
    RETRY = "retry"
    """The live attempt ends ``failed`` and the task is requeued (answer ``retrying``)."""
    DUPLICATE = "duplicate"
    """A retry of the stored attempt: nothing changes."""
    DROP = "drop"
    """Not stored (409 with the reason); nothing changes but a counter."""
    REFUSE = "refuse"
    """No attempt id where one is required (400 ``attempt_required``)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    reason: DropReason | None = None


ACCEPT, SALVAGE, STORE_FAILED = Outcome(Action.ACCEPT), Outcome(Action.SALVAGE), Outcome(Action.STORE_FAILED)
RETRY, DUPLICATE, REFUSE = Outcome(Action.RETRY), Outcome(Action.DUPLICATE), Outcome(Action.REFUSE)


def drop(reason: DropReason) -> Outcome:
    return Outcome(Action.DROP, reason)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of README's table: the words of its first two columns, what it matches, its two outcomes."""

    state: str
    carries: str
    reject: Outcome
    salvage: Outcome
    states: frozenset[TaskState]
    attempts: frozenset[Carries]
    results: frozenset[Result]
    required: bool | None
    """``require_attempt_id`` must be this (None: either)."""

    def matches(self, state: TaskState, carries: Carries, result: Result, required: bool) -> bool:
        return (
            state in self.states
            and carries in self.attempts
            and result in self.results
            and self.required in (None, required)
        )


SAME: Outcome | None = None
"""As a rule's ``salvage``: the same outcome as under ``reject``."""


def rule(
    state: str,
    carries: str,
    reject: Outcome,
    salvage: Outcome | None = SAME,
    *,
    states: Iterable[TaskState] = TaskState,
    attempts: Iterable[Carries] = Carries,
    results: Iterable[Result] = Result,
    required: bool | None = None,
) -> Rule:
    """A row; what it leaves out matches anything."""
    return Rule(
        state, carries, reject, reject if salvage is None else salvage,
        frozenset(states), frozenset(attempts), frozenset(results), required,
    )  # fmt: skip


S, C, R = TaskState, Carries, Result
ENDED = (S.CLAIMED, S.REQUEUED)
"""Claimed at least once and not finished: the tasks whose earlier attempts may still post."""
FAILED = (R.FAILED_RETRY, R.FAILED_FINAL)

RULES: tuple[Rule, ...] = (
    rule("anything", "no attempt id, `require_attempt_id=True`", REFUSE, attempts=[C.NONE], required=True),
    rule("cancelled", "anything", drop(DropReason.CANCELLED), states=[S.CANCELLED]),
    rule("unknown rollout id", "anything", drop(DropReason.UNKNOWN_ROLLOUT), states=[S.UNKNOWN]),
    rule("known task", "an id never issued for it", drop(DropReason.UNKNOWN_ATTEMPT), attempts=[C.UNISSUED]),
    rule("queued, never claimed", "no attempt id", drop(DropReason.UNKNOWN_ATTEMPT), states=[S.QUEUED]),
    rule("completed by A", "A", DUPLICATE, states=[S.COMPLETED], attempts=[C.STORED]),
    rule(
        "completed by A", "any other attempt, or no attempt id", drop(DropReason.ALREADY_COMPLETED),
        states=[S.COMPLETED],
    ),
    rule("claimed by attempt A", "A", ACCEPT, states=[S.CLAIMED], attempts=[C.LIVE], results=[R.ORDINARY]),
    rule(
        "claimed, not completed", "no attempt id (an old client)", ACCEPT,
        states=[S.CLAIMED], attempts=[C.NONE], results=[R.ORDINARY],
    ),
    rule(
        "claimed by A, `retry_failed` left", "A's (or an old client's) *failed* result", RETRY,
        states=[S.CLAIMED], attempts=[C.LIVE, C.NONE], results=[R.FAILED_RETRY],
    ),
    rule(
        "claimed by A, no `retry_failed` left", "a failed result", STORE_FAILED,
        states=[S.CLAIMED], attempts=[C.LIVE, C.NONE], results=[R.FAILED_FINAL],
    ),
    rule(
        "requeued or re-claimed after A failed", "A, anything", drop(DropReason.FAILED),
        states=ENDED, attempts=[C.FAILED],
    ),
    rule(
        "requeued or re-claimed after A released its claim", "A, anything", drop(DropReason.RELEASED),
        states=ENDED, attempts=[C.RELEASED],
    ),
    rule(
        "requeued or re-claimed, `retry_failed` set", "an earlier attempt's (or an old client's) failed result",
        drop(DropReason.SUPERSEDED), states=ENDED, attempts=[C.EARLIER, C.NONE], results=FAILED,
    ),
    rule(
        "claimed by A", "an earlier attempt B of it", drop(DropReason.SUPERSEDED), SALVAGE,
        states=[S.CLAIMED], attempts=[C.EARLIER],
    ),
    rule(
        "requeued, no live claim", "an earlier attempt B", drop(DropReason.SUPERSEDED), SALVAGE,
        states=[S.REQUEUED], attempts=[C.EARLIER],
    ),
    rule(
        "requeued, no live claim", "no attempt id", drop(DropReason.SUPERSEDED), SALVAGE,
        states=[S.REQUEUED], attempts=[C.NONE],
    ),
)  # fmt: skip
"""README's outcome table, row by row; the first rule that matches a submission decides."""

Key = tuple[TaskState, Carries, Result, bool]
"""A submission's situation: its task's state, what it carries, its result, whether attempt ids are required."""


def rule_for(state: TaskState, carries: Carries, result: Result, required: bool) -> Rule | None:
    """The first rule matching the situation (None: no rule does, an impossible situation)."""
    return next((rule for rule in RULES if rule.matches(state, carries, result, required)), None)


def outcomes(policy: StalePolicy) -> Mapping[Key, Outcome]:
    """Every situation some rule matches, with its outcome under ``policy``."""
    table: dict[Key, Outcome] = {}
    for key in itertools.product(TaskState, Carries, Result, (False, True)):
        rule = rule_for(*key)
        if rule is not None:
            table[key] = rule.salvage if policy == "salvage" else rule.reject
    return table
