"""A mixed fleet: an old worker's result, without an attempt id, is credited only where it can only be its claim's.

Workers on the shim carry attempt ids; old workers do not. On a task claimed once, an id-less
result is that claim's; on a re-claimed task it may be a superseded attempt's, so it is credited
to no attempt, and the live attempt's own result, when it comes, is dropped as already_completed,
counted, as the guide (section 2) says.
"""

from __future__ import annotations

from lightning_attempts import AttemptAwareDataStore, AttemptRollout, DropReason
from lightning_attempts.testing import ManualClock

T = 10.0


def claim(store: AttemptAwareDataStore, *, leased: bool) -> tuple[str, str]:
    task = store.claim(leased=leased)
    assert task is not None and task.attempt_id is not None
    return task.rollout_id, task.attempt_id


async def test_an_old_workers_result_on_a_reclaimed_task_is_credited_to_no_attempt(clock: ManualClock) -> None:
    """Mixed fleet: the old straggler posts while the shim's re-claim B is live; B's own result is then dropped."""
    store = AttemptAwareDataStore(task_timeout_seconds=T, clock=clock)
    await store.add_task("mixed")
    rid, _ = claim(store, leased=False)  # the old worker's claim
    clock.advance(T + 0.01)
    store.requeue_expired()
    _, b = claim(store, leased=True)  # the shim's re-claim
    unverified = store.submit(AttemptRollout(rollout_id=rid, final_reward=0.0), None)
    assert (unverified.status, unverified.verified, unverified.current_attempt_id) == ("ok", False, None)
    own = store.submit(AttemptRollout(rollout_id=rid, final_reward=1.0), b)
    assert (own.status, own.reason, own.http_status) == ("dropped", DropReason.ALREADY_COMPLETED, 409)
    stats = store.stats()
    assert (stats["dropped"]["already_completed"], stats["duplicates"], stats["salvaged"]) == (1, 0, 0)
    history = store.history(rid) or []
    assert [e["outcome"] for e in history] == ["timed_out", "superseded"]
    assert "without an attempt id" in history[1]["note"]


async def test_an_old_workers_result_on_a_task_claimed_once_is_its_claims(clock: ManualClock) -> None:
    store = AttemptAwareDataStore(task_timeout_seconds=T, clock=clock)
    await store.add_task("old")
    rid, attempt = claim(store, leased=False)
    answer = store.submit(AttemptRollout(rollout_id=rid, final_reward=1.0), None)
    assert (answer.status, answer.current_attempt_id) == ("ok", attempt)
    assert store.submit(AttemptRollout(rollout_id=rid), attempt).status == "duplicate"
