"""The upstream runner of the installed release, unmodified, with stragglers past the task timeout."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from lightning_attempts import AttemptAwareClient, AttemptAwareServer
from lightning_attempts.compat import AgentLightningClient, LegacyRollout
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from ..upstream import RESOURCES, StragglerAgent, make_runner, run_until_stopped, stop_fleet

TIMEOUT = 60.0
WORKERS, TASKS, SLOW = 3, 8, (2, 5)
Served = ServerThread[AttemptAwareServer]


@pytest.fixture
def served(clock: ManualClock) -> Iterator[Served]:
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=TIMEOUT, clock=clock)) as running:
        running.call(running.server.update_resources(RESOURCES))
        yield running


def run_fleet(
    served: Served, clock: ManualClock, client_class: type, use_async: bool, slow: tuple[int, ...] = SLOW
) -> dict[str, Any]:
    """Queue TASKS (``slow`` ones straggle), run WORKERS upstream runners until all are stored.

    A straggler moves the server's clock past the timeout, which can expire other claims
    in flight too: those tasks may be re-claimed as well, as they would be in real life.
    """
    store = served.server.store
    submitted: Counter[str] = Counter()
    submit = store.submit

    def recording_submit(rollout: LegacyRollout, attempt_id: str | None = None) -> Any:
        submitted[rollout.rollout_id] += 1
        return submit(rollout, attempt_id)

    store.submit = recording_submit  # type: ignore[method-assign]
    agent = StragglerAgent(expire=lambda: clock.advance(TIMEOUT + 1), stale_posted=lambda rid: submitted[rid] >= 1)
    rids = [served.call(served.server.queue_task({"i": i, "slow": i in slow}, mode="train")) for i in range(TASKS)]
    threads = [
        threading.Thread(
            target=run_until_stopped,
            args=(agent, make_runner(agent, client_class(served.endpoint, poll_interval=0.02), i), use_async),
            daemon=True,
        )
        for i in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    stored: dict[str, Any] = {}
    try:
        while len(stored) < TASKS:
            rollout = served.call(served.server.poll_completed_rollout(rids[len(stored)], timeout=30))
            assert rollout is not None, f"task {len(stored)} never completed"
            stored[rollout.rollout_id] = rollout
    finally:
        stop_fleet(served, threads)
    assert not any(thread.is_alive() for thread in threads)
    assert all(agent.calls[rids[i]] >= 2 for i in slow)
    return {"stored": stored, "rids": rids, "stats": served.server.attempt_stats()}


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_shim_stores_exactly_the_current_attempts_result(served: Served, clock: ManualClock, use_async: bool) -> None:
    result = run_fleet(served, clock, AttemptAwareClient, use_async)
    stored, rids = result["stored"], result["rids"]
    assert sorted(stored) == sorted(rids)  # exactly one per task
    assert {rid: stored[rid].final_reward for rid in rids} == dict.fromkeys(rids, 1.0)  # never the stale 0.0
    for rid in rids:
        *earlier, last = served.server.attempt_history(rid) or []
        assert (last["outcome"], stored[rid].attempt_id) == ("completed", last["attempt_id"])
        assert all(entry["outcome"] == "timed_out" for entry in earlier)
    stats = result["stats"]
    assert stats["dropped"]["superseded"] >= len(SLOW)
    assert stats["accepted_unverified"] == 0


def test_old_clients_still_get_one_result_per_task_but_not_the_right_one(served: Served, clock: ManualClock) -> None:
    """Why the shim exists: without an attempt id, the straggler's stale result wins the race."""
    result = run_fleet(served, clock, AgentLightningClient, use_async=False, slow=(3,))
    stored, rids = result["stored"], result["rids"]
    assert sorted(stored) == sorted(rids)
    assert stored[rids[3]].final_reward == 0.0
    assert result["stats"]["accepted_unverified"] == TASKS + WORKERS  # the stop tasks too
    # Flagged: it may be the stale one. The server's timer may also have requeued another claim
    # when the clock jumped, so that task's unverified result counts too, and its re-claim's
    # result is dropped too.
    assert result["stats"]["accepted_unverified_reclaimed"] >= 1
    assert result["stats"]["dropped"]["already_completed"] >= 1
