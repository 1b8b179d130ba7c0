"""Model-based test of AttemptAwareDataStore: random operations against a small reference model.

After every step: each outcome is what the README's table says, at most one rollout is ever
stored per task, no task is lost, and the counters agree with what happened. Submissions may
be failed results (retried under ``retry_failed``), and workers may release their claims.
Claims may be leased (their worker says it heartbeats, on the claim or by a heartbeat) or not:
only a leased claim is requeued for silence, after ``unresponsive_seconds``; any claim at its timeout,
but, with a ``task_budget``, a leased one, which its worker keeps while it heartbeats. A task is
given up (completed empty) when its ``max_claims``-th counted claim ends (a claim its worker gives back
unrun, as a fast-failing worker does over and over, is not counted) or its budget runs out: the budget
counts the time its claims held it and the time it waited while no claim at all was in flight,
never the time it waited behind other claims (a release, a timeout, a retried failure behind a long queue).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lightning_attempts import AttemptAwareDataStore, AttemptRollout, StalePolicy
from lightning_attempts.models import ReleaseReason
from lightning_attempts.testing import ManualClock

TIMEOUT, WINDOW = 10.0, 4.0


@dataclass
class ModelTask:
    status: str = "queued"  # queued (never claimed) | claimed | requeued | completed | cancelled
    attempts: list[str] = field(default_factory=list[str])
    deadline: float = 0.0
    leased: bool = False  # the live claim's worker said it heartbeats: silence past WINDOW ends it
    heard: float = 0.0  # when the live claim's worker last said so
    word: int = 0  # the order of that word among all words: the store requeues equal silences in that order
    stored: str | None = None  # attempt credited with the stored result
    spent: float = 0.0  # budget spent by its ended claims and counted waits
    since: float = 0.0  # when its live claim started, or (waiting) the idle clock when it began to wait
    failures: int = 0  # failed results of live attempts that were retried
    ended: dict[str, str] = field(default_factory=dict[str, str])  # attempt -> "failed" | "released"
    unrun: int = 0  # claims given back unrun (no_resources, skipped): not counted toward max_claims


class StoreMachine(RuleBasedStateMachine):
    policy: StalePolicy = "reject"
    require_attempt_id = False
    retry_failed = 0
    task_budget: float | None = None
    max_claims: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.loop = asyncio.new_event_loop()
        self.store = AttemptAwareDataStore(
            task_timeout_seconds=TIMEOUT,
            stale_policy=self.policy,
            require_attempt_id=self.require_attempt_id,
            retry_failed=self.retry_failed,
            unresponsive_seconds=WINDOW,
            task_budget=self.task_budget,
            max_claims=self.max_claims,
            clock=self.clock,
        )
        self.tasks: dict[str, ModelTask] = {}
        self.queue: list[str] = []
        self.in_flight: list[str] = []  # claim order
        self.counts: Counter[str] = Counter()
        self.ever_stored: Counter[str] = Counter()
        self.unretrieved: set[str] = set()
        self.words = 0  # claims and heartbeats so far
        self.idle = 0.0  # seconds time passed with no claim in flight (the budget's idle clock)

    def teardown(self) -> None:
        self.loop.close()

    @initialize()
    def start_with_a_task(self) -> None:
        self.add_task()

    @rule()
    def add_task(self) -> None:
        rid = self.loop.run_until_complete(self.store.add_task({"n": len(self.tasks)}))
        self.tasks[rid] = ModelTask()
        self.queue.append(rid)

    @rule(leased=st.booleans())
    def claim(self, leased: bool) -> None:
        task = self.store.claim(leased=leased)
        if not self.queue:
            assert task is None
            return
        rid = self.queue.pop(0)
        assert task is not None and task.rollout_id == rid
        model = self.tasks[rid]
        assert task.attempt_id is not None and task.attempt_id not in model.attempts
        model.attempts.append(task.attempt_id)
        assert task.claim_sequence_id == task.num_claims == len(model.attempts)
        model.status, model.deadline = "claimed", self.clock() + TIMEOUT
        model.leased, model.heard, model.word = leased, self.clock(), self._word()
        if len(model.attempts) > 1:  # it waited: only the idle part counts
            model.spent += self.idle - model.since
        model.since = self.clock()
        self.in_flight.append(rid)
        self.counts["claims"] += 1

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self.in_flight))
        model = self.tasks[rid]
        assert self.store.heartbeat(rid, model.attempts[-1]).current
        model.leased, model.heard, model.word = True, self.clock(), self._word()
        self.counts["heartbeats"] += 1

    def _word(self) -> int:
        self.words += 1
        return self.words

    @rule(seconds=st.floats(min_value=0, max_value=1.5 * TIMEOUT))
    def time_passes(self, seconds: float) -> None:
        if not self.in_flight:
            self.idle += seconds
        self.clock.advance(seconds)
        now = self.clock()
        kept = self.task_budget is not None  # a leased claim outlives the timeout while its worker heartbeats
        timed_out = [
            rid for rid in self.in_flight if self.tasks[rid].deadline < now and not (kept and self.tasks[rid].leased)
        ]
        # Then the leased claims silent too long, in the order of their last word (claim or heartbeat), which
        # orders equal silences too; never a claim that is not leased.
        silent = [rid for rid in self.in_flight if rid not in timed_out and self.tasks[rid].leased]
        silent = sorted(
            (rid for rid in silent if self.tasks[rid].heard < now - WINDOW), key=lambda r: self.tasks[r].word
        )
        for rid in timed_out + silent:
            self.in_flight.remove(rid)
            if self.end_claim(rid):
                self.counts["requeues"] += 1
            self.counts["requeues_unresponsive"] += rid in silent
        # Then the tasks past their budget: claimed for longer than it, or waiting with it spent.
        over = []
        if self.task_budget is not None:
            budget = self.task_budget * TIMEOUT
            unfinished = [rid for rid, m in self.tasks.items() if m.status in ("claimed", "requeued")]
            over = [rid for rid in unfinished if self.spent(rid) > budget]
        for rid in over:
            if rid in self.in_flight:
                self.in_flight.remove(rid)
            if rid in self.queue:
                self.queue.remove(rid)
            self.give_up(rid, "task_budget_exceeded")
        assert self.store.requeue_expired() == len(timed_out) + len(silent) + len(over)

    def spent(self, rid: str) -> float:
        """What the task has spent of its budget by now."""
        model = self.tasks[rid]
        running = self.clock() - model.since if model.status == "claimed" else self.idle - model.since
        return model.spent + running

    def end_claim(self, rid: str, unrun: bool = False) -> bool:
        """The live claim ended without a result: the task is requeued (True), or given up at ``max_claims``
        or with its budget spent; ``unrun``: given back unrun, it is requeued whatever the count."""
        model = self.tasks[rid]
        model.spent, model.since = self.spent(rid), self.idle
        if unrun:
            model.unrun += 1
            model.status = "requeued"
            self.queue.append(rid)
            return True
        if self.max_claims is not None and len(model.attempts) - model.unrun >= self.max_claims:
            self.give_up(rid, "max_claims_exceeded")
            return False
        if self.task_budget is not None and model.spent >= self.task_budget * TIMEOUT:
            self.give_up(rid, "task_budget_exceeded")
            return False
        model.status = "requeued"
        self.queue.append(rid)
        return True

    def give_up(self, rid: str, why: str) -> None:
        self.accept(rid, None)
        self.counts["accepted"] -= 1  # completed empty: not a result anyone posted
        self.counts["given_up"] += 1
        self.counts[why] += 1

    @precondition(lambda self: bool(self.tasks))
    @rule(
        data=st.data(),
        which=st.sampled_from(["current", "earlier", "any issued", "forged", "none", "unknown rollout"]),
        failed=st.booleans(),
    )
    def submit(self, data: st.DataObject, which: str, failed: bool) -> None:
        rid = data.draw(st.sampled_from(list(self.tasks)))
        model = self.tasks[rid]
        attempt: str | None
        if which == "current" and model.attempts:
            attempt = model.attempts[-1]
        elif which == "earlier" and len(model.attempts) > 1:
            attempt = data.draw(st.sampled_from(model.attempts[:-1]))
        elif which == "any issued" and model.attempts:
            attempt = data.draw(st.sampled_from(model.attempts))
        elif which == "none":
            attempt = None
        elif which == "unknown rollout":
            rid, attempt = f"rollout-{uuid.uuid4()}", str(uuid.uuid4())
        else:
            attempt = str(uuid.uuid4())
        before = self.store.stats()
        outcome = self.store.submit(
            AttemptRollout(rollout_id=rid, attempt_id=attempt, final_reward=None if failed else 1.0),
            attempt,
            failed=failed,
        )
        status, reason, credited = self.expected(rid, attempt, failed)
        assert (outcome.status, outcome.reason.value if outcome.reason else None) == (status, reason), (
            which,
            self.tasks.get(rid),
        )
        live_failure = failed and self.retry_failed > 0 and status in ("ok", "retrying") and credited is not None
        if live_failure and self.tasks[rid].attempts[-1] == credited and self.tasks[rid].status == "claimed":
            self.counts["failed_attempts"] += 1
        if status == "ok":
            if live_failure and self.tasks[rid].status == "claimed":
                self.counts["failed_stored"] += 1
            self.accept(rid, credited)
        elif status == "retrying":
            model = self.tasks[rid]
            model.failures += 1
            model.ended[model.attempts[-1]] = "failed"
            model.spent, model.since = self.spent(rid), self.idle
            model.status = "requeued"
            self.in_flight.remove(rid)
            self.queue.append(rid)
            self.counts["failure_retries"] += 1
        elif status == "duplicate":
            self.counts["duplicates"] += 1
        elif status == "refused":
            self.counts["refused"] += 1
        else:
            self.counts[f"dropped:{reason}"] += 1
            after = self.store.stats()
            assert {k: v for k, v in after.items() if not k.startswith("dropped")} == {
                k: v for k, v in before.items() if not k.startswith("dropped")
            }  # a drop changes nothing but its counter

    def expected(self, rid: str, attempt: str | None, failed: bool = False) -> tuple[str, str | None, str | None]:
        """(status, reason, credited attempt) as the README's outcome table says."""
        if attempt is None and self.require_attempt_id:
            return "refused", None, None
        model = self.tasks.get(rid)
        if model is None:
            return "dropped", "unknown_rollout", None
        if model.status == "cancelled":
            return "dropped", "cancelled", None
        if model.status == "completed":
            if attempt is not None and attempt == model.stored:
                return "duplicate", None, None
            if attempt is not None and attempt not in model.attempts:
                return "dropped", "unknown_attempt", None
            return "dropped", "already_completed", None
        if attempt is not None and attempt not in model.attempts:
            return "dropped", "unknown_attempt", None
        if model.status == "queued":  # never claimed: no attempt could have produced it
            return "dropped", "unknown_attempt", None
        retry = failed and self.retry_failed > 0
        if model.status == "claimed" and attempt in (None, model.attempts[-1]):
            claims_left = self.max_claims is None or len(model.attempts) - model.unrun < self.max_claims
            budget_left = self.task_budget is None or self.spent(rid) < self.task_budget * TIMEOUT
            if retry and model.failures < self.retry_failed and claims_left and budget_left:
                return "retrying", None, model.attempts[-1]
            if retry or attempt is not None or len(model.attempts) == 1:
                return "ok", None, model.attempts[-1]
            return "ok", None, None  # an old worker's result on a re-claimed task: maybe not the live claim's
        if attempt in model.ended:  # a failed or released attempt: dropped under either policy
            return "dropped", model.ended[attempt], None
        if self.policy == "salvage" and not retry:
            return "ok", None, attempt
        return "dropped", "superseded", None

    @precondition(lambda self: bool(self.tasks))
    @rule(
        data=st.data(),
        which=st.sampled_from(["current", "earlier", "forged"]),
        reason=st.sampled_from([None, "no_resources", "skipped", "interrupted", "closing"]),
    )
    def release(self, data: st.DataObject, which: str, reason: ReleaseReason | None) -> None:
        rid = data.draw(st.sampled_from(list(self.tasks)))
        model = self.tasks[rid]
        if which == "current" and model.attempts:
            attempt = model.attempts[-1]
        elif which == "earlier" and len(model.attempts) > 1:
            attempt = data.draw(st.sampled_from(model.attempts[:-1]))
        else:
            attempt = str(uuid.uuid4())
        before = self.store.stats()
        answer = self.store.release(rid, attempt, reason, "worker")
        if model.status == "claimed" and attempt == model.attempts[-1]:
            assert answer.released
            model.ended[attempt] = "released"
            self.in_flight.remove(rid)
            unrun = reason in ("no_resources", "skipped")
            assert answer.gave_up is not self.end_claim(rid, unrun)
            self.counts["releases"] += 1
            self.counts["releases_unrun"] += unrun
            return
        assert not answer.released
        self.counts["releases_stale"] += 1
        after = self.store.stats()
        assert {k: v for k, v in after.items() if k != "releases_stale"} == {
            k: v for k, v in before.items() if k != "releases_stale"
        }  # a refused release changes nothing

    def accept(self, rid: str, credited: str | None) -> None:
        model = self.tasks[rid]
        if rid in self.in_flight:
            self.in_flight.remove(rid)
        if rid in self.queue:
            self.queue.remove(rid)
        model.status, model.stored = "completed", credited
        self.ever_stored[rid] += 1
        self.unretrieved.add(rid)
        self.counts["accepted"] += 1

    @rule(data=st.data(), everything=st.booleans())
    def cancel(self, data: st.DataObject, everything: bool) -> None:
        live = {rid for rid, model in self.tasks.items() if model.status in ("queued", "claimed", "requeued")}
        chosen: list[str] | None = None
        if not everything and self.tasks:
            chosen = data.draw(st.lists(st.sampled_from(list(self.tasks)), max_size=3, unique=True))
        cancelled = self.store.cancel(chosen)
        expected = live if chosen is None else live & set(chosen)
        assert set(cancelled) == expected
        for rid in expected:
            self.tasks[rid].status = "cancelled"
            if rid in self.queue:
                self.queue.remove(rid)
            if rid in self.in_flight:
                self.in_flight.remove(rid)

    @rule()
    def retrieve(self) -> None:
        rollouts = self.loop.run_until_complete(self.store.retrieve_completed_rollouts())
        assert sorted(r.rollout_id for r in rollouts) == sorted(self.unretrieved)
        self.unretrieved.clear()

    @invariant()
    def at_most_one_result_per_task(self) -> None:
        assert all(count <= 1 for count in self.ever_stored.values())

    @invariant()
    def no_task_lost(self) -> None:
        stats = self.store.stats()
        assert stats["queued"] == len(self.queue)
        assert stats["claims_in_flight"] == len(self.in_flight)
        assert stats["completed_unretrieved"] == len(self.unretrieved)
        finished = sum(model.status in ("completed", "cancelled") for model in self.tasks.values())
        assert stats["finished_remembered"] == finished
        assert len(self.queue) + len(self.in_flight) + finished == len(self.tasks)

    @invariant()
    def counters_agree(self) -> None:
        stats: dict[str, Any] = self.store.stats()
        for name in (
            "claims",
            "requeues",
            "requeues_unresponsive",
            "heartbeats",
            "accepted",
            "duplicates",
            "refused",
            "failed_attempts",
            "failure_retries",
            "failed_stored",
            "releases",
            "releases_unrun",
            "releases_stale",
            "given_up",
            "max_claims_exceeded",
            "task_budget_exceeded",
        ):
            assert stats[name] == self.counts[name], name
        for reason, count in stats["dropped"].items():
            assert count == self.counts[f"dropped:{reason}"], reason


def machine(policy: StalePolicy, require: bool, retry_failed: int, limited: bool) -> type[StoreMachine]:
    limits = {"task_budget": 3.0, "max_claims": 3} if limited else {}
    return type(
        f"StoreMachine_{policy}_{require}_{retry_failed}_{limited}",
        (StoreMachine,),
        {"policy": policy, "require_attempt_id": require, "retry_failed": retry_failed, **limits},
    )


@pytest.mark.parametrize("policy", ["reject", "salvage"])
@pytest.mark.parametrize("require", [False, True], ids=["old-clients-allowed", "attempt-required"])
@pytest.mark.parametrize("retry_failed", [0, 2], ids=["no-retries", "retry-failed-2"])
@pytest.mark.parametrize("limited", [False, True], ids=["no-limits", "budget-and-max-claims"])
def test_store_against_the_model(policy: StalePolicy, require: bool, retry_failed: int, limited: bool) -> None:
    test_case = machine(policy, require, retry_failed, limited).TestCase
    test_case.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
    test_case().runTest()
