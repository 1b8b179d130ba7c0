"""Claims ended without their worker's word whose worker never came back: what the server's fleet watch reports.

A worker comes back from such a claim by posting its result (dropped) or a release; until then it is stuck in its
agent, or dead. All on the store's injected clock.
"""

from __future__ import annotations

from lightning_attempts import AttemptAwareDataStore, AttemptRollout
from lightning_attempts.testing import ManualClock

T, LEASE, BUDGET = 10.0, 3.0, 8.0


def claim(store: AttemptAwareDataStore, *, leased: bool) -> tuple[str, str]:
    task = store.claim(leased=leased)
    assert task is not None and task.attempt_id is not None
    return task.rollout_id, task.attempt_id


async def test_a_poison_tasks_worker_is_stranded_until_its_late_result_comes(clock: ManualClock) -> None:
    store = AttemptAwareDataStore(task_timeout_seconds=T, unresponsive_seconds=1000.0, task_budget=BUDGET, clock=clock)
    await store.add_task("poison")
    await store.add_task("fine")
    rid, attempt = claim(store, leased=True)
    fine, fine_attempt = claim(store, leased=True)
    store.submit(AttemptRollout(rollout_id=fine, final_reward=1.0), fine_attempt)
    assert store.stranded().total == 0  # a live claim is its worker's, not stranded
    clock.advance(BUDGET * T + 1)
    store.requeue_expired()  # given up at its budget, its worker still inside the agent
    stranded = store.stranded()
    assert (dict(stranded.counts), stranded.latest) == ({"given_up": 1}, (rid, attempt, "given_up"))
    assert store.heartbeat(rid, attempt).current is False  # told, and still stuck: not back yet
    assert store.stranded().total == 1
    store.submit(AttemptRollout(rollout_id=rid, final_reward=1.0), attempt)  # the agent returned at last: dropped
    assert store.stranded().total == 0


async def test_requeued_superseded_and_cancelled_claims_are_stranded_until_heard(clock: ManualClock) -> None:
    store = AttemptAwareDataStore(task_timeout_seconds=T, unresponsive_seconds=LEASE, clock=clock)
    for name in ("silent", "old", "cancelled"):
        await store.add_task(name)
    silent, silent_attempt = claim(store, leased=True)
    old, _ = claim(store, leased=False)  # an old worker: its results carry no attempt id
    cancelled, _ = claim(store, leased=True)
    clock.advance(LEASE + 1)
    store.requeue_expired()  # "silent" and "cancelled" went silent: requeued
    store.cancel([cancelled])
    clock.advance(T)
    store.requeue_expired()  # "old" timed out: requeued
    assert dict(store.stranded().counts) == {"unresponsive": 2, "timed_out": 1}
    store.release(silent, silent_attempt)  # a stale release: its worker is back
    store.submit(AttemptRollout(rollout_id=old, final_reward=1.0))  # an old worker's late result, no attempt id
    assert dict(store.stranded().counts) == {"unresponsive": 1}  # the cancelled task's worker, never heard from


async def test_claims_ended_by_their_own_workers_are_never_stranded(clock: ManualClock) -> None:
    store = AttemptAwareDataStore(task_timeout_seconds=T, retry_failed=1, clock=clock)
    for name in ("done", "released", "failed"):
        await store.add_task(name)
    done, done_attempt = claim(store, leased=False)
    released, released_attempt = claim(store, leased=False)
    failed, failed_attempt = claim(store, leased=False)
    store.submit(AttemptRollout(rollout_id=done, final_reward=1.0), done_attempt)
    store.release(released, released_attempt)
    store.submit(AttemptRollout(rollout_id=failed), failed_attempt, failed=True)
    assert store.stranded().total == 0 and store.stranded().latest is None
