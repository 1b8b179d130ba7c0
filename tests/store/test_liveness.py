"""Nothing holds a batch for ever: slow tasks kept by their heartbeating workers, poison tasks given up.

With a ``task_budget`` (the switch's default: 8 task timeouts), a claim whose worker heartbeats
is kept past the task timeout while it heartbeats, and a task unfinished that long after its
first claim is completed empty and marked; ``max_claims`` bounds the claims a task takes.
All on the store's injected clock.
"""

from __future__ import annotations

import logging

import pytest

from lightning_attempts import AttemptAwareDataStore, AttemptRollout, DropReason
from lightning_attempts.switch.variables import SWITCH_DEFAULTS
from lightning_attempts.testing import ManualClock

T, LEASE, BUDGET = 10.0, 3.0, 8.0


@pytest.fixture
def store(clock: ManualClock) -> AttemptAwareDataStore:
    return AttemptAwareDataStore(task_timeout_seconds=T, unresponsive_seconds=LEASE, task_budget=BUDGET, clock=clock)


def claim(store: AttemptAwareDataStore, *, leased: bool) -> tuple[str, str]:
    task = store.claim(leased=leased)
    assert task is not None and task.attempt_id is not None
    return task.rollout_id, task.attempt_id


def beat_for(store: AttemptAwareDataStore, clock: ManualClock, rid: str, attempt: str, seconds: float) -> None:
    """The worker heartbeats every lease/3 for ``seconds``; the server requeues what expired meanwhile."""
    for _ in range(round(seconds / (LEASE / 3))):
        clock.advance(LEASE / 3)
        store.requeue_expired()
        store.heartbeat(rid, attempt)


def test_the_switch_gives_up_after_at_most_eight_task_timeouts() -> None:
    assert SWITCH_DEFAULTS["task_budget"] == 8.0 and SWITCH_DEFAULTS["max_claims"] == 8


async def test_a_heartbeating_worker_keeps_its_slow_task_past_the_timeout(
    store: AttemptAwareDataStore, clock: ManualClock
) -> None:
    """The agent always needs 1.5 task timeouts: its one claim is kept, its real result stored; no second claim."""
    await store.add_task("slow")
    rid, attempt = claim(store, leased=True)
    beat_for(store, clock, rid, attempt, 1.5 * T)
    assert store.submit(AttemptRollout(rollout_id=rid, final_reward=1.0), attempt).status == "ok"
    stats = store.stats()
    assert (stats["claims"], stats["requeues"], stats["given_up"], stats["dropped_total"]) == (1, 0, 0, 0)
    assert [entry["outcome"] for entry in store.history(rid) or []] == ["completed"]


async def test_an_old_workers_claim_still_ends_at_the_timeout(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    """No heartbeats, no lease: upstream's timeout, and its late result meets the outcome table as before."""
    await store.add_task("slow")
    claim(store, leased=False)
    clock.advance(T + 0.1)
    assert store.requeue_expired() == 1
    assert store.stats()["requeues"] == 1 and store.queued() == 1


async def test_without_a_budget_a_leased_claim_ends_at_the_timeout(clock: ManualClock) -> None:
    store = AttemptAwareDataStore(task_timeout_seconds=T, unresponsive_seconds=LEASE, clock=clock)
    await store.add_task("slow")
    rid, attempt = claim(store, leased=True)
    beat_for(store, clock, rid, attempt, T + LEASE / 3)
    assert store.stats()["requeues"] == 1
    assert store.heartbeat(rid, attempt).reason is DropReason.SUPERSEDED


async def test_a_poison_task_is_given_up_at_its_budget_marked_and_counted(
    store: AttemptAwareDataStore, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent never returns, its worker heartbeats: the task completes empty at 8 timeouts, once."""
    await store.add_task("poison")
    await store.add_task("fine")
    rid, attempt = claim(store, leased=True)
    other, other_attempt = claim(store, leased=True)
    assert store.submit(AttemptRollout(rollout_id=other, final_reward=1.0), other_attempt).status == "ok"
    caplog.set_level(logging.WARNING, logger="lightning_attempts.store")
    beat_for(store, clock, rid, attempt, BUDGET * T - LEASE)
    assert store.next_deadline() == pytest.approx(1000.0 + BUDGET * T)  # the manual clock starts at 1000
    assert store.stats()["given_up"] == 0
    beat_for(store, clock, rid, attempt, 2 * LEASE)
    stored = store.stored([rid])
    assert len(stored) == 1 and stored[0].final_reward is None and not stored[0].triplets
    assert (stored[0].metadata or {})["lightning_attempts"] == {"outcome": "task_budget_exceeded", "claims": 1}
    stats = store.stats()
    assert (stats["given_up"], stats["task_budget_exceeded"], stats["claims"]) == (1, 1, 2)
    gave_up = [r.getMessage() for r in caplog.records if "Giving up" in r.getMessage()]
    assert len(gave_up) == 1 and rid in gave_up[0] and "task_budget_exceeded" in gave_up[0]
    (entry,) = store.history(rid) or []
    assert entry["outcome"] == "timed_out" and "task_budget" in entry["note"]
    assert store.heartbeat(rid, attempt).reason is DropReason.ALREADY_COMPLETED  # its worker is told to stop
    late = store.submit(AttemptRollout(rollout_id=rid, final_reward=1.0), attempt)
    assert (late.status, late.reason) == ("dropped", DropReason.ALREADY_COMPLETED)


async def test_the_budget_counts_from_the_first_claim_and_ends_a_requeued_task_too(
    store: AttemptAwareDataStore, clock: ManualClock
) -> None:
    """An old fleet: each claim times out, the task waits in the queue when its budget runs out."""
    rid = await store.add_task("hopeless")
    for _ in range(int(BUDGET)):
        claim(store, leased=False)
        clock.advance(T + 0.01)
        store.requeue_expired()
    assert store.stats()["given_up"] == 1 and store.queued() == 0
    assert (store.stored([rid])[0].metadata or {})["lightning_attempts"]["outcome"] == "task_budget_exceeded"
    assert store.claim() is None


async def test_a_worker_killed_on_every_claim_counts_toward_max_claims(clock: ManualClock) -> None:
    """An OOM on one input: each claim's worker dies after its first beat; the second death gives the task up."""
    store = AttemptAwareDataStore(
        task_timeout_seconds=T, unresponsive_seconds=LEASE, task_budget=BUDGET, max_claims=2, clock=clock
    )
    rid = await store.add_task("oom")
    for _ in range(2):
        _, attempt = claim(store, leased=True)
        store.heartbeat(rid, attempt)
        clock.advance(LEASE + 0.01)
        store.requeue_expired()
    assert (store.stored([rid])[0].metadata or {})["lightning_attempts"] == {
        "outcome": "max_claims_exceeded",
        "claims": 2,
    }
    assert [e["outcome"] for e in store.history(rid) or []] == ["unresponsive", "unresponsive"]
    stats = store.stats()
    assert (stats["given_up"], stats["max_claims_exceeded"], stats["requeues_unresponsive"]) == (1, 1, 2)


async def test_a_claim_kept_past_its_timeout_is_counted_once_marked_and_its_age_noted(
    store: AttemptAwareDataStore, clock: ManualClock
) -> None:
    """A slow task shows nowhere else: no requeue, one claim. Its claim is counted once, at its first word after the
    timeout, and its age is noted at each word until its result."""
    await store.add_task("slow")
    await store.add_task("quick")
    rid, attempt = claim(store, leased=True)
    quick, quick_attempt = claim(store, leased=True)
    assert store.submit(AttemptRollout(rollout_id=quick, final_reward=1.0), quick_attempt).status == "ok"
    beat_for(store, clock, rid, attempt, T)  # the last beat falls on the timeout: not past it yet
    assert store.stats()["claims_kept_past_timeout"] == 0
    beat_for(store, clock, rid, attempt, 2 * T)
    stats = store.stats()
    assert (stats["claims_kept_past_timeout"], stats["longest_kept_claim_seconds"]) == (1, pytest.approx(3 * T))
    clock.advance(LEASE / 2)
    assert store.submit(AttemptRollout(rollout_id=rid, final_reward=1.0), attempt).status == "ok"
    stats = store.stats()
    assert (stats["claims_kept_past_timeout"], stats["requeues"]) == (1, 0)
    assert stats["longest_kept_claim_seconds"] == pytest.approx(3 * T + LEASE / 2)
    assert [entry["kept_past_timeout"] for entry in store.history(rid) or []] == [True]
    assert [entry["kept_past_timeout"] for entry in store.history(quick) or []] == [False]


async def test_a_claim_kept_past_its_timeout_is_counted_at_its_result_without_a_beat_after_the_timeout(
    store: AttemptAwareDataStore, clock: ManualClock
) -> None:
    """Beats every lease/3 may all fall before the timeout: the result itself says the claim was kept."""
    await store.add_task("slow")
    rid, attempt = claim(store, leased=True)
    beat_for(store, clock, rid, attempt, T - LEASE / 3)
    clock.advance(LEASE / 3 + 0.5)  # past the timeout, no beat since
    store.requeue_expired()
    assert store.submit(AttemptRollout(rollout_id=rid, final_reward=1.0), attempt).status == "ok"
    stats = store.stats()
    assert (stats["claims_kept_past_timeout"], stats["longest_kept_claim_seconds"]) == (1, pytest.approx(T + 0.5))


async def test_an_old_workers_claim_is_never_counted_as_kept(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    await store.add_task("slow")
    rid, attempt = claim(store, leased=False)
    clock.advance(T - 0.1)
    assert store.submit(AttemptRollout(rollout_id=rid, final_reward=1.0), attempt).status == "ok"
    assert store.stats()["claims_kept_past_timeout"] == 0
