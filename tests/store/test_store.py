"""AttemptAwareDataStore on its own: every row of the outcome table, under both policies."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest

from lightning_attempts import AttemptAwareDataStore, AttemptRollout, AttemptTask, DropReason, StalePolicy
from lightning_attempts.testing import ManualClock

TIMEOUT = 10.0
POLICIES: list[StalePolicy] = ["reject", "salvage"]


@pytest.fixture(params=POLICIES)
def policy(request: pytest.FixtureRequest) -> StalePolicy:
    return request.param


@pytest.fixture
def store(clock: ManualClock, policy: StalePolicy) -> AttemptAwareDataStore:
    return AttemptAwareDataStore(task_timeout_seconds=TIMEOUT, stale_policy=policy, clock=clock)


def result(rollout_id: str, attempt_id: str | None = None, reward: float = 1.0) -> AttemptRollout:
    return AttemptRollout(rollout_id=rollout_id, attempt_id=attempt_id, final_reward=reward)


def claim(store: AttemptAwareDataStore) -> AttemptTask:
    task = store.claim()
    assert task is not None
    return task


def expire(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    clock.advance(TIMEOUT + 0.001)
    assert store.requeue_expired() >= 1


def snapshot(store: AttemptAwareDataStore) -> dict[str, Any]:
    """Everything a drop must leave alone: the stats less the drop counters, and what is stored."""
    stats = store.stats()
    for counter in ("dropped", "dropped_total"):
        stats.pop(counter)
    stored = {rid: r.model_dump() for rid, r in store._completed_rollouts.items()}  # pyright: ignore[reportPrivateUsage]
    return {"stats": stats, "stored": stored, "queue": list(store._book.queue)}  # pyright: ignore[reportPrivateUsage]


async def test_claims_are_attempts_with_sequence_ids(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    rid = await store.add_task({"q": 1}, mode="train")
    first = claim(store)
    assert first.rollout_id == rid
    assert uuid.UUID(first.attempt_id or "").version == 4
    assert (first.claim_sequence_id, first.num_claims) == (1, 1)
    assert first.model_dump()["num_claims"] == 1  # the deprecated mirror stays on the wire
    expire(store, clock)
    second = claim(store)
    assert (second.claim_sequence_id, second.num_claims) == (2, 2)
    assert second.attempt_id != first.attempt_id
    assert (second.input, second.mode) == ({"q": 1}, "train")


async def test_current_attempt_is_accepted(store: AttemptAwareDataStore) -> None:
    rid = await store.add_task("x")
    task = claim(store)
    outcome = store.submit(result(rid, task.attempt_id), task.attempt_id)
    assert (outcome.status, outcome.http_status, outcome.claim_sequence_id) == ("ok", 200, 1)
    assert [r.rollout_id for r in await store.retrieve_completed_rollouts()] == [rid]
    assert store.stats()["claims_in_flight"] == 0


async def test_earlier_attempt_while_a_later_claim_is_live(
    store: AttemptAwareDataStore, clock: ManualClock, policy: StalePolicy
) -> None:
    rid = await store.add_task("x")
    early = claim(store)
    expire(store, clock)
    late = claim(store)
    outcome = store.submit(result(rid, early.attempt_id), early.attempt_id)
    if policy == "reject":
        assert (outcome.status, outcome.reason) == ("dropped", DropReason.SUPERSEDED)
        assert (outcome.current_attempt_id, outcome.current_claim_sequence_id) == (late.attempt_id, 2)
        assert store.submit(result(rid, late.attempt_id), late.attempt_id).status == "ok"
    else:
        assert outcome.status == "ok"
        assert store.stats()["salvaged"] == 1
        # The live claim is superseded: its own result now finds the task completed.
        later = store.submit(result(rid, late.attempt_id), late.attempt_id)
        assert (later.status, later.reason) == ("dropped", DropReason.ALREADY_COMPLETED)
    assert len(await store.retrieve_completed_rollouts()) == 1


async def test_earlier_attempt_while_requeued(
    store: AttemptAwareDataStore, clock: ManualClock, policy: StalePolicy
) -> None:
    rid = await store.add_task("x")
    early = claim(store)
    expire(store, clock)
    outcome = store.submit(result(rid, early.attempt_id), early.attempt_id)
    if policy == "reject":
        assert (outcome.status, outcome.reason) == ("dropped", DropReason.SUPERSEDED)
        assert claim(store).claim_sequence_id == 2  # still queued
    else:
        assert outcome.status == "ok"
        assert store.claim() is None  # the task left the queue
        assert store.stats()["queued"] == 0


@pytest.mark.parametrize("requeued", [False, True])
async def test_no_attempt_id_from_an_old_client(
    store: AttemptAwareDataStore, clock: ManualClock, policy: StalePolicy, requeued: bool
) -> None:
    rid = await store.add_task("x")
    claimed = claim(store)
    if requeued:
        expire(store, clock)
    outcome = store.submit(result(rid), None)
    if requeued and policy == "reject":
        assert (outcome.status, outcome.reason) == ("dropped", DropReason.SUPERSEDED)
        assert claim(store).claim_sequence_id == 2
        return
    assert (outcome.status, outcome.verified) == ("ok", False)
    assert store.stats()["accepted_unverified"] == 1
    assert store.claim() is None
    # Still at most one per task: a second old-style result is refused.
    again = store.submit(result(rid), None)
    assert (again.status, again.reason) == ("dropped", DropReason.ALREADY_COMPLETED)
    if not requeued:  # credited to the live claim, so that claim's own retry is a duplicate
        assert store.submit(result(rid, claimed.attempt_id), claimed.attempt_id).status == "duplicate"


async def test_unverified_result_of_a_reclaimed_task_is_flagged(
    store: AttemptAwareDataStore, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An old client's result while a re-claim is live may be the straggler's: warn and count it."""
    once, twice = await store.add_task("once"), await store.add_task("twice")
    claim(store)
    claim(store)
    assert store.submit(result(once), None).status == "ok"
    assert store.stats()["accepted_unverified_reclaimed"] == 0
    expire(store, clock)  # requeues "twice" (claimed second, so still queued behind nothing)
    claim(store)
    with caplog.at_level(logging.WARNING, logger="lightning_attempts.store"):
        assert store.submit(result(twice), None).status == "ok"
    assert store.stats()["accepted_unverified_reclaimed"] == 1
    (line,) = [r.getMessage() for r in caplog.records if "without attempt id" in r.getMessage()]
    assert twice in line and "claimed 2 times" in line


async def test_retry_of_the_stored_attempt_is_a_duplicate(store: AttemptAwareDataStore) -> None:
    rid = await store.add_task("x")
    task = claim(store)
    assert store.submit(result(rid, task.attempt_id, 1.0), task.attempt_id).status == "ok"
    before = snapshot(store)
    retry = store.submit(result(rid, task.attempt_id, 0.0), task.attempt_id)
    assert (retry.status, retry.http_status) == ("duplicate", 200)
    after = snapshot(store)
    assert after["stored"] == before["stored"]  # the first result stays, unchanged
    assert after["stats"]["duplicates"] == before["stats"]["duplicates"] + 1


async def test_other_attempt_after_completion(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    rid = await store.add_task("x")
    early = claim(store)
    expire(store, clock)
    late = claim(store)
    assert store.submit(result(rid, late.attempt_id), late.attempt_id).status == "ok"
    outcome = store.submit(result(rid, early.attempt_id), early.attempt_id)
    assert (outcome.status, outcome.reason, outcome.http_status) == ("dropped", DropReason.ALREADY_COMPLETED, 409)
    assert (outcome.claim_sequence_id, outcome.current_attempt_id) == (1, late.attempt_id)


async def test_cancelled_task_drops_everything(store: AttemptAwareDataStore) -> None:
    claimed_rid = await store.add_task("claimed")
    queued_rid = await store.add_task("queued")
    task = claim(store)
    assert sorted(store.cancel()) == sorted([claimed_rid, queued_rid])
    assert store.claim() is None
    for rid, attempt in ((claimed_rid, task.attempt_id), (claimed_rid, None), (queued_rid, None)):
        outcome = store.submit(result(rid, attempt), attempt)
        assert (outcome.status, outcome.reason) == ("dropped", DropReason.CANCELLED)
    assert store.cancel() == []


async def test_unknown_rollout(store: AttemptAwareDataStore) -> None:
    outcome = store.submit(result("rollout-nope", "a"), "a")
    assert (outcome.status, outcome.reason) == ("dropped", DropReason.UNKNOWN_ROLLOUT)


async def test_attempt_never_issued_for_a_known_task(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    waiting = await store.add_task("never claimed")
    rid = await store.add_task("claimed")
    store.claim()  # the first task
    task = claim(store)
    other = str(uuid.uuid4())
    for target in (waiting, rid):
        outcome = store.submit(result(target, other), other)
        assert (outcome.status, outcome.reason) == ("dropped", DropReason.UNKNOWN_ATTEMPT)
    # ...nor another task's attempt, nor after completion.
    assert store.submit(result(rid, task.attempt_id), task.attempt_id).status == "ok"
    outcome = store.submit(result(rid, other), other)
    assert outcome.reason == DropReason.UNKNOWN_ATTEMPT


async def test_require_attempt_id_refuses_old_clients(clock: ManualClock, policy: StalePolicy) -> None:
    store = AttemptAwareDataStore(
        task_timeout_seconds=TIMEOUT, stale_policy=policy, require_attempt_id=True, clock=clock
    )
    rid = await store.add_task("x")
    task = claim(store)
    before = snapshot(store)
    outcome = store.submit(result(rid), None)
    assert (outcome.status, outcome.http_status, outcome.reason_text) == ("refused", 400, "attempt_required")
    after = snapshot(store)
    assert after["stats"].pop("refused") == before["stats"].pop("refused") + 1
    assert after == before
    assert store.submit(result(rid, task.attempt_id), task.attempt_id).status == "ok"


async def test_drops_change_nothing(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    done = await store.add_task("done")
    live = await store.add_task("live")
    first = claim(store)
    assert store.submit(result(done, first.attempt_id), first.attempt_id).status == "ok"
    claim(store)
    before = snapshot(store)
    forged = str(uuid.uuid4())
    for rid, attempt in ((done, forged), (live, forged), ("rollout-x", forged), (done, None)):
        assert store.submit(result(rid, attempt, 9.0), attempt).status == "dropped"
    assert snapshot(store) == before
    assert store.stats()["dropped_total"] == 4


async def test_each_drop_logs_one_warning_without_the_payload(
    store: AttemptAwareDataStore, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    rid = await store.add_task("x")
    early = claim(store)
    expire(store, clock)
    late = claim(store)
    assert store.submit(result(rid, late.attempt_id), late.attempt_id).status == "ok"
    caplog.clear()
    payload = AttemptRollout(rollout_id=rid, attempt_id=early.attempt_id, metadata={"secret": "PAYLOAD-MARKER"})
    with caplog.at_level(logging.DEBUG, logger="lightning_attempts"):
        store.submit(payload, early.attempt_id)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    for part in (rid, str(early.attempt_id), str(late.attempt_id), "claim 1", "claim 2", "already_completed"):
        assert part in line
    assert "PAYLOAD-MARKER" not in caplog.text


async def test_a_drops_log_line_says_only_what_is_known(
    store: AttemptAwareDataStore, caplog: pytest.LogCaptureFixture
) -> None:
    """``python -m benchmarks.slow_tasks`` printed "(submitted attempt None, claim None; current attempt None, ...)"."""
    with caplog.at_level(logging.WARNING, logger="lightning_attempts.store"):
        store.submit(result("rollout-nope"), None)
        store.submit(result("rollout-nope", "a"), "a")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Dropped result")]
    assert lines == [
        "Dropped result for rollout-nope: unknown_rollout (submitted without an attempt id)",
        "Dropped result for rollout-nope: unknown_rollout (submitted attempt a)",
    ]


async def test_drop_counters_by_reason(store: AttemptAwareDataStore) -> None:
    rid = await store.add_task("x")
    task = claim(store)
    store.submit(result("rollout-nope", "a"), "a")
    store.submit(result(rid, "forged"), "forged")
    store.submit(result(rid, task.attempt_id), task.attempt_id)
    store.submit(result(rid, task.attempt_id), task.attempt_id)
    stats = store.stats()
    assert stats["dropped"] == {
        "superseded": 0,
        "already_completed": 0,
        "cancelled": 0,
        "unknown_rollout": 1,
        "unknown_attempt": 1,
        "failed": 0,
        "released": 0,
    }
    assert (stats["accepted"], stats["duplicates"], stats["claims"], stats["dropped_total"]) == (1, 1, 1, 2)


async def test_requeue_waits_for_the_deadline(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    await store.add_task("x")
    claim(store)
    clock.advance(TIMEOUT - 0.001)
    assert store.requeue_expired() == 0
    assert store.claim() is None
    clock.advance(0.002)
    assert store.requeue_expired() == 1
    assert claim(store).claim_sequence_id == 2


async def test_completed_claim_is_never_requeued(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    rid = await store.add_task("x")
    task = claim(store)
    assert store.submit(result(rid, task.attempt_id), task.attempt_id).status == "ok"
    clock.advance(TIMEOUT * 10)
    assert store.requeue_expired() == 0
    assert store.claim() is None
    assert store.stats()["requeues"] == 0


async def test_requeue_pops_only_expired_claims_in_order(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    rids = [await store.add_task(i) for i in range(5)]
    for _ in rids[:3]:
        claim(store)
    clock.advance(TIMEOUT / 2)
    claim(store)
    claim(store)
    clock.advance(TIMEOUT / 2 + 0.001)
    assert store.requeue_expired() == 3
    assert [claim(store).rollout_id for _ in range(3)] == rids[:3]
    assert store.stats()["claims_in_flight"] == 5


async def test_wall_clock_jumps_do_not_requeue(store: AttemptAwareDataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.add_task("x")
    claim(store)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86_400)  # NTP moves the wall clock a day ahead
    assert store.requeue_expired() == 0
    monkeypatch.setattr(time, "time", lambda: real_time() - 86_400)
    assert store.requeue_expired() == 0


async def test_finished_tasks_are_remembered_up_to_a_bound(clock: ManualClock) -> None:
    store = AttemptAwareDataStore(task_timeout_seconds=TIMEOUT, max_remembered=3, clock=clock)
    done: list[tuple[str, str | None]] = []
    for i in range(5):
        rid = await store.add_task(i)
        task = claim(store)
        assert store.submit(result(rid, task.attempt_id), task.attempt_id).status == "ok"
        done.append((rid, task.attempt_id))
    assert store.stats()["finished_remembered"] == 3
    forgotten, remembered = done[0], done[-1]
    assert store.submit(result(*forgotten), forgotten[1]).reason == DropReason.UNKNOWN_ROLLOUT
    assert store.submit(result(*remembered), remembered[1]).status == "duplicate"


async def test_upstream_store_api_still_works(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    rid = await store.add_task("x")
    task = await store.get_next_task()
    assert task is not None and store.get_processing_tasks() == {rid: task}
    await store.requeue_task(task)
    task = await store.get_next_task()
    assert isinstance(task, AttemptTask) and task.claim_sequence_id == 2
    outcome = await store.store_rollout(result(rid, task.attempt_id))
    assert outcome.status == "ok"
    rollout = await store.retrieve_rollout(rid)
    assert rollout is not None and rollout.rollout_id == rid


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="stale_policy"):
        AttemptAwareDataStore(stale_policy="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_remembered"):
        AttemptAwareDataStore(max_remembered=-1)


async def test_stored_attempt_names_the_attempt_credited_with_the_result(
    store: AttemptAwareDataStore, clock: ManualClock, policy: StalePolicy
) -> None:
    """What verl's daemon reads to train a result without triplets on its own attempt's LLM calls."""
    first = await store.add_task({"n": 1})
    straggler = claim(store)
    expire(store, clock)
    reclaim = claim(store)
    assert store.stored_attempt(first) is None  # not finished
    store.submit(result(first, straggler.attempt_id), straggler.attempt_id)  # salvaged, or dropped
    if policy == "reject":
        store.submit(result(first, reclaim.attempt_id), reclaim.attempt_id)
    assert store.stored_attempt(first) == (straggler if policy == "salvage" else reclaim).attempt_id
    cancelled = await store.add_task({"n": 2})
    claim(store)
    store.cancel([cancelled])
    assert store.stored_attempt(cancelled) is None
    assert store.stored_attempt("never-queued") is None


async def test_a_drop_names_the_live_attempt_only_in_part_below_debug(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The live attempt's id is its LLM proxy URLs' capability: a WARNING shows 8 characters of it, DEBUG all."""
    store = AttemptAwareDataStore(task_timeout_seconds=TIMEOUT, clock=clock)
    rid = await store.add_task("x")
    early = claim(store)
    expire(store, clock)
    late = claim(store)
    assert late.attempt_id is not None
    with caplog.at_level(logging.DEBUG, logger="lightning_attempts.store"):
        store.submit(result(rid, early.attempt_id), early.attempt_id)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("current attempt " + late.attempt_id[:8] + "..." in line for line in warnings), warnings
    assert not any(late.attempt_id in line for line in warnings)
    assert any(late.attempt_id in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
