"""README's outcome table is the code's: row by row the same words and outcomes, and a real store obeys each row.

``lightning_attempts.store.table.RULES`` holds the table as data. Here README.md's table is
read and compared with it, and every situation a store can be in (each task state, each
kind of attempt id, ordinary and failed results, attempt ids required or not) is built on a
real ``AttemptAwareDataStore`` and submitted to, under both policies: the answer must be
the outcome of the first rule that matches, and every rule must decide some situation.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from lightning_attempts import AttemptAwareDataStore, AttemptRollout, DropReason, StalePolicy
from lightning_attempts.store.table import (
    ACCEPT,
    DUPLICATE,
    REFUSE,
    RETRY,
    RULES,
    SALVAGE,
    STORE_FAILED,
    Action,
    Carries,
    Outcome,
    Result,
    Rule,
    TaskState,
    drop,
    rule_for,
)
from lightning_attempts.testing import ManualClock

from ..paths import README

HEADER = "| task's state | submission carries |"

WORDS: dict[str, Outcome] = {
    "400, `attempt_required`": REFUSE,
    "duplicate": DUPLICATE,
    "200 `retrying`": RETRY,
    "accept, marked": STORE_FAILED,
    "accept; ": SALVAGE,
    "accept": ACCEPT,
}
"""How README words each outcome, by the start of its cell (longest first where one starts another)."""

STATUS = {
    Action.ACCEPT: "ok",
    Action.SALVAGE: "ok",
    Action.STORE_FAILED: "ok",
    Action.RETRY: "retrying",
    Action.DUPLICATE: "duplicate",
    Action.DROP: "dropped",
    Action.REFUSE: "refused",
}


def readme_rows() -> list[list[str]]:
    text = README.read_text()
    lines = text[text.index(HEADER) :].splitlines()[2:]  # past the header and its rule
    rows: list[list[str]] = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def parse(cell: str, reject: Outcome | None = None) -> Outcome:
    if cell.startswith("same") and reject is not None:
        return reject
    if found := re.fullmatch(r"drop, `(\w+)`", cell):
        return drop(DropReason(found[1]))
    for words, outcome in WORDS.items():
        if cell.startswith(words):
            return outcome
    raise AssertionError(f"README's outcome {cell!r} is not one the table knows")


def test_readme_rows_are_the_rules_in_order() -> None:
    rows = readme_rows()
    assert all(len(row) == 4 for row in rows), rows
    documented = [
        (state, carries, parse(reject), parse(salvage, parse(reject))) for state, carries, reject, salvage in rows
    ]
    coded = [(rule.state, rule.carries, rule.reject, rule.salvage) for rule in RULES]
    assert documented == coded


S, C, R = TaskState, Carries, Result
CARRIES: dict[TaskState, set[Carries]] = {
    S.UNKNOWN: {C.NONE, C.UNISSUED},
    S.QUEUED: {C.NONE, C.UNISSUED},
    S.CLAIMED: set(C) - {C.STORED},
    S.REQUEUED: set(C) - {C.LIVE, C.STORED},
    S.COMPLETED: set(C) - {C.LIVE},
    S.CANCELLED: set(C) - {C.LIVE, C.STORED},
}
"""What an attempt id can be to a task in each state."""


def situations() -> list[tuple[TaskState, Carries, Result, bool]]:
    found: list[tuple[TaskState, Carries, Result, bool]] = []
    for state, carried in CARRIES.items():
        # Only a task claimed and not finished is judged for retries; the others' rules ignore the result.
        results = list(R) if state in (S.CLAIMED, S.REQUEUED) else [R.ORDINARY, R.FAILED_FINAL]
        for carries in sorted(carried, key=lambda c: c.name):
            found += [(state, carries, result, required) for result in results for required in (False, True)]
    return found


class Situation:
    """One situation built on a real store: a task's history, then the submission to make."""

    def __init__(self, state: TaskState, carries: Carries, result: Result, required: bool, policy: StalePolicy) -> None:
        self.clock = ManualClock()
        self.store = AttemptAwareDataStore(
            task_timeout_seconds=10,
            stale_policy=policy,
            require_attempt_id=required,
            retry_failed=1 if result is R.FAILED_FINAL else 2,  # FAILED_FINAL: after one failed attempt
            clock=self.clock,
        )
        self.failed = result is not R.ORDINARY
        self.ids: dict[Carries, str] = {}
        self.rollout_id = "rollout-never-queued"
        if state is not S.UNKNOWN:
            self.rollout_id = asyncio.run(self.store.add_task({"n": 1}))
        if state not in (S.UNKNOWN, S.QUEUED):
            self._history(state, carries, result)
        self.attempt_id = None if carries is C.NONE else self.ids.get(carries, str(uuid.uuid4()))

    def _claim(self) -> str:
        task = self.store.claim()
        assert task is not None and task.attempt_id is not None
        return task.attempt_id

    def _submit(self, attempt_id: str | None, failed: bool) -> str:
        rollout = AttemptRollout(
            rollout_id=self.rollout_id, attempt_id=attempt_id, final_reward=None if failed else 1.0
        )
        return self.store.submit(rollout, attempt_id, failed=failed).status

    def _history(self, state: TaskState, carries: Carries, result: Result) -> None:
        if carries is C.FAILED or result is R.FAILED_FINAL:
            self.ids[C.FAILED] = self._claim()
            assert self._submit(self.ids[C.FAILED], failed=True) == "retrying"
        if carries is C.RELEASED:
            self.ids[C.RELEASED] = self._claim()
            assert self.store.release(self.rollout_id, self.ids[C.RELEASED]).released
        if carries is C.EARLIER or (state is S.REQUEUED and not self.ids):
            self.ids[C.EARLIER] = self._claim()
            self.clock.advance(11)
            assert self.store.requeue_expired() == 1
        if state in (S.CLAIMED, S.COMPLETED):
            self.ids[C.LIVE] = self._claim()
        if state is S.COMPLETED:
            self.ids[C.STORED] = self.ids.pop(C.LIVE)
            assert self._submit(self.ids[C.STORED], failed=False) == "ok"
        if state is S.CANCELLED:
            assert self.store.cancel([self.rollout_id]) == [self.rollout_id]


@pytest.mark.parametrize("policy", ["reject", "salvage"])
def test_a_real_store_answers_every_situation_as_its_rule_says(policy: StalePolicy) -> None:
    decided: set[Rule] = set()
    for state, carries, result, required in situations():
        rule = rule_for(state, carries, result, required)
        assert rule is not None, f"no rule for {state}, {carries}, {result}, required={required}"
        decided.add(rule)
        outcome = rule.salvage if policy == "salvage" else rule.reject
        built = Situation(state, carries, result, required, policy)
        rollout = AttemptRollout(
            rollout_id=built.rollout_id, attempt_id=built.attempt_id, final_reward=None if built.failed else 1.0
        )
        answer = built.store.submit(rollout, built.attempt_id, failed=built.failed)
        where = f"{rule.state!r} / {rule.carries!r} ({state.name}, {carries.name}, {result.name}, {required=})"
        assert (answer.status, answer.reason) == (STATUS[outcome.action], outcome.reason), where
        if outcome in (ACCEPT, STORE_FAILED):  # credited to the live claim
            assert answer.current_attempt_id == built.ids[C.LIVE], where
        if outcome == SALVAGE:  # credited to the submitted attempt
            assert answer.current_attempt_id == built.attempt_id, where
        if outcome == STORE_FAILED:
            (stored,) = asyncio.run(built.store.retrieve_completed_rollouts())
            assert (stored.metadata or {})["lightning_attempts"]["outcome"] == "failed", where
    assert decided == set(RULES), [rule.state for rule in RULES if rule not in decided]  # every row is reachable


@pytest.mark.parametrize("policy", ["reject", "salvage"])
def test_an_attempt_is_live_exactly_when_its_result_would_be_stored(policy: StalePolicy) -> None:
    """``liveness`` (what verl's LLM proxy asks) and ``submit`` agree in every situation an attempt id can be in."""
    seen: set[str | None] = set()
    for state, carries, result, required in situations():
        if carries is C.NONE:
            continue  # liveness is asked of an attempt id
        built = Situation(state, carries, result, required, policy)
        assert built.attempt_id is not None
        where = f"{state.name}, {carries.name}, {result.name}, {required=}, {policy}"
        liveness = built.store.liveness(built.rollout_id, built.attempt_id)
        rollout = AttemptRollout(rollout_id=built.rollout_id, attempt_id=built.attempt_id, final_reward=1.0)
        answer = built.store.submit(rollout, built.attempt_id)  # an ordinary result of the attempt
        seen.add(liveness)
        if liveness is None:
            assert answer.status == "ok", where
        else:
            assert answer.status in ("dropped", "duplicate"), where
            assert liveness == ("completed" if answer.status == "duplicate" else answer.reason), where
    expected = {
        None,
        "completed",
        "already_completed",
        "cancelled",
        "unknown_rollout",
        "unknown_attempt",
        "failed",
        "released",
    }
    assert expected | ({"superseded"} if policy == "reject" else set()) <= seen, seen
