"""A stalled server (a long GC pause, a paused VM) does not take claims from live workers that heartbeat.

While the event loop is stalled, the workers' heartbeats wait unread in their sockets; when it
resumes, the deadline timer, late, runs before their requests do. The real event loop is blocked
here, as a stall would block it: what is tested is the order in which the loop runs things.
"""

from __future__ import annotations

import time

import pytest

from lightning_attempts import AttemptAwareClient, AttemptAwareDataStore, AttemptAwareServer
from lightning_attempts.testing import ManualClock, serve_in_thread

from ..upstream import RESOURCES

LEASE = 1.5


@pytest.mark.timeout(60)
def test_a_live_worker_keeps_its_claim_through_a_stall_longer_than_its_lease() -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=60, unresponsive_seconds=LEASE)
    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        rid = served.call(server.queue_task({"i": 0}, mode="train"))
        client = AttemptAwareClient(served.endpoint, poll_interval=0.05)  # heartbeats every LEASE / 3
        try:
            task = client.poll_next_task()
            assert task is not None and task.rollout_id == rid
            time.sleep(LEASE / 2)  # a heartbeat or so: the claim is leased and heard from
            served.loop.call_soon_threadsafe(time.sleep, 2 * LEASE)  # the stall: nothing runs on the loop
            time.sleep(3 * LEASE)  # the stall, then a beat read after it
            history = served.run(lambda: server.attempt_history(rid)) or []
            stats = served.run(server.attempt_stats)
        finally:
            client.close()
    assert [entry["outcome"] for entry in history] == ["in_flight"], history
    assert stats["requeues_unresponsive"] == 0 and stats["heartbeats"] >= 3, stats


async def test_a_stalled_server_forgives_the_silence_it_could_not_hear(clock: ManualClock) -> None:
    store = AttemptAwareDataStore(task_timeout_seconds=60, unresponsive_seconds=LEASE, clock=clock)
    await store.add_task("alive")
    task = store.claim(leased=True)
    assert task is not None and task.attempt_id is not None
    rid, attempt = task.rollout_id, task.attempt_id
    clock.advance(LEASE * 2)  # the server's loop stalled: the worker's beats wait unread in its socket
    store.forgive_silence(LEASE * 2)
    assert store.requeue_expired() == 0
    assert store.heartbeat(rid, attempt).current  # the first beat read after the stall
