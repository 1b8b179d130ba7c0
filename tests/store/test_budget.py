"""The task budget counts the time a task was worked on: never the time it waited behind other work.

Task timeout 1 s, ``task_budget`` 3 (3 s), one worker: the task given back (released, requeued after its
lease or its timeout, retried after a failure) waits behind five tasks of 0.9 s each, 4.5 s in all, and
is then run, not given up. It waited while claims were in flight; a wait while none is (the fleet idle,
or stuck inside the task's earlier attempts) still counts, so a task nobody can run still ends.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lightning_attempts import AttemptAwareDataStore, AttemptRollout
from lightning_attempts.testing import ManualClock

TIMEOUT, BUDGET = 1.0, 3.0


def store_with(clock: ManualClock, **options: object) -> AttemptAwareDataStore:
    return AttemptAwareDataStore(
        task_timeout_seconds=TIMEOUT,
        task_budget=BUDGET,
        max_claims=8,
        clock=clock,
        **options,  # type: ignore[arg-type]
    )


def claim(store: AttemptAwareDataStore, leased: bool = False) -> tuple[str, str]:
    task = store.claim(leased=leased)
    assert task is not None and task.attempt_id is not None
    return task.rollout_id, task.attempt_id


def outcome(store: AttemptAwareDataStore, rid: str) -> object:
    rollout = store.stored([rid])
    return rollout[0].metadata if rollout else None


def run_queue_of(store: AttemptAwareDataStore, clock: ManualClock, tasks: int, seconds: float) -> None:
    """One worker runs ``tasks`` tasks of ``seconds`` each, within their timeout, the deadline timer firing between."""
    for _ in range(tasks):
        rid, attempt = claim(store)
        clock.advance(seconds)
        store.requeue_expired()
        done = AttemptRollout(rollout_id=rid, attempt_id=attempt, final_reward=1.0)
        assert store.submit(done, attempt).status == "ok"
        store.requeue_expired()


def heartbeat_for(store: AttemptAwareDataStore, clock: ManualClock, rid: str, attempt: str, beats: int) -> None:
    """The worker of the live claim heartbeats every 0.25 s, ``beats`` times; nothing expires meanwhile."""
    for _ in range(beats):
        clock.advance(0.25)
        assert store.heartbeat(rid, attempt).current
        assert store.requeue_expired() == 0


def given_back_by_release(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    rid, attempt = claim(store)
    assert store.release(rid, attempt).released


def given_back_by_silence(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    claim(store, leased=True)
    clock.advance(0.6)  # unresponsive_seconds=0.5
    assert store.requeue_expired() == 1


def given_back_by_timeout(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    claim(store)
    clock.advance(TIMEOUT + 0.01)
    assert store.requeue_expired() == 1


def given_back_by_failure(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    rid, attempt = claim(store)
    failed = AttemptRollout(rollout_id=rid, attempt_id=attempt, final_reward=None)
    assert store.submit(failed, attempt, failed=True).status == "retrying"


@pytest.mark.parametrize(
    "give_back",
    [given_back_by_release, given_back_by_silence, given_back_by_timeout, given_back_by_failure],
    ids=["released", "lease-expired", "timed-out", "failed-and-retried"],
)
async def test_a_task_that_waited_behind_a_long_queue_is_run_not_given_up(
    give_back: Callable[[AttemptAwareDataStore, ManualClock], None],
) -> None:
    clock = ManualClock()
    store = store_with(clock, unresponsive_seconds=0.5, retry_failed=1)
    task_a = await store.add_task({"n": "A"})
    for n in range(5):
        await store.add_task({"n": n})
    give_back(store, clock)  # A, the first in line, goes to the back
    run_queue_of(store, clock, 5, 0.9)  # 4.5 s behind them, more than the 3 s budget
    assert store.stats()["task_budget_exceeded"] == 0
    rid, attempt = claim(store)
    assert rid == task_a
    assert store.submit(AttemptRollout(rollout_id=rid, attempt_id=attempt, final_reward=1.0), attempt).status == "ok"
    assert [entry["outcome"] for entry in store.history(task_a) or []][-1] == "completed"


async def test_a_task_waiting_while_no_claim_is_in_flight_spends_its_budget() -> None:
    """Both workers stuck in a poison task's earlier attempts: nobody asks; its budget runs on, and it ends."""
    clock = ManualClock()
    store = store_with(clock)
    poison = await store.add_task({"poison": True})
    given_back_by_timeout(store, clock)  # 1 s held
    given_back_by_timeout(store, clock)  # 2 s held, and both workers still inside the agent
    deadline = store.next_deadline()
    assert deadline is not None and deadline == pytest.approx(clock() + BUDGET - 2 * (TIMEOUT + 0.01))
    clock.advance(BUDGET - 2 * (TIMEOUT + 0.01) + 0.001)
    assert store.requeue_expired() == 1
    assert outcome(store, poison) == {"lightning_attempts": {"outcome": "task_budget_exceeded", "claims": 2}}


async def test_a_claim_kept_past_its_timeout_spends_the_budget_it_held() -> None:
    """A leased claim is kept past its timeout while its worker heartbeats, until the task has been worked on 3 s."""
    clock = ManualClock()
    store = store_with(clock, unresponsive_seconds=0.5)
    rid = await store.add_task({"slow": True})
    _, attempt = claim(store, leased=True)
    heartbeat_for(store, clock, rid, attempt, 11)
    lease = store.heartbeat(rid, attempt)
    assert lease.current and lease.expires_in == pytest.approx(BUDGET - 2.75)
    clock.advance(0.3)
    assert store.requeue_expired() == 1
    assert outcome(store, rid) == {"lightning_attempts": {"outcome": "task_budget_exceeded", "claims": 1}}


async def test_a_claim_given_back_unrun_after_the_budget_ran_out_ends_the_task() -> None:
    """Not counted toward max_claims, but not a way past the budget either (the timer may fire a moment late)."""
    clock = ManualClock()
    store = store_with(clock, unresponsive_seconds=0.5)
    rid = await store.add_task({"slow": True})
    _, attempt = claim(store, leased=True)
    heartbeat_for(store, clock, rid, attempt, 11)
    clock.advance(0.3)  # 3.05 s held; the deadline timer has not fired yet
    answer = store.release(rid, attempt, "no_resources", "worker")
    assert answer.released and answer.gave_up
    assert outcome(store, rid) == {"lightning_attempts": {"outcome": "task_budget_exceeded", "claims": 1}}
