"""AttemptAwareClient against real servers: which attempt id each submission carries."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from lightning_attempts import AttemptAwareClient, AttemptAwareServer, AttemptRollout, AttemptTask
from lightning_attempts.compat import ROLLOUT_ECHOES_TASK, AgentLightningServer, LegacyRollout
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

TIMEOUT = 60.0
Served = ServerThread[AttemptAwareServer]


@pytest.fixture
def client(served: Served) -> Iterator[AttemptAwareClient]:
    client = AttemptAwareClient(served.endpoint, poll_interval=0.01, timeout=10)
    yield client
    client.close()


def plain(rollout_id: str, reward: float = 1.0) -> Any:
    """What the upstream runner posts: the rollout id, no task, no attempt."""
    return LegacyRollout(rollout_id=rollout_id, final_reward=reward)


def poll(client: AttemptAwareClient) -> AttemptTask:
    task = client.poll_next_task()
    assert task is not None and task.attempt_id is not None
    return task


def test_poll_returns_the_attempt(served: Served, client: AttemptAwareClient) -> None:
    rid = served.call(served.server.queue_task("x"))
    task = poll(client)
    assert isinstance(task, AttemptTask)
    assert (task.rollout_id, task.claim_sequence_id, task.num_claims) == (rid, 1, 1)
    assert client.is_current(task.attempt_id or "")


def test_resolution_order(served: Served, client: AttemptAwareClient, clock: ManualClock) -> None:
    rid = served.call(served.server.queue_task("x"))
    first = poll(client)
    clock.advance(TIMEOUT + 1)
    second = poll(client)  # the same task, re-claimed: now the context holds the second claim
    # 1. the rollout's own attempt id wins over everything
    assert client.attempt_id_for(AttemptRollout(rollout_id=rid, attempt_id="own")) == "own"
    # 2. then the echoed task's (0.2+: 0.1.x rollouts have no task)
    if ROLLOUT_ECHOES_TASK:
        assert client.attempt_id_for(LegacyRollout(rollout_id=rid, task=first)) == first.attempt_id
    # 3. then the claim made in this thread
    assert client.attempt_id_for(plain(rid)) == second.attempt_id
    # 4. then the only open claim of that rollout id, from another thread
    other_rid = served.call(served.server.queue_task("y"))
    other = poll(client)
    seen: list[str | None] = []
    worker = threading.Thread(target=lambda: seen.extend([client.attempt_id_for(plain(other_rid))]))
    worker.start()
    worker.join()
    assert seen == [other.attempt_id]
    # ...but two open claims of one task from elsewhere are ambiguous: 5. none
    worker = threading.Thread(target=lambda: seen.append(client.attempt_id_for(plain(rid))))
    worker.start()
    worker.join()
    assert seen[-1] is None


def test_submission_carries_the_claim_and_forgets_it(served: Served, client: AttemptAwareClient) -> None:
    rid = served.call(served.server.queue_task("x"))
    task = poll(client)
    answer = client.post_rollout(plain(rid))
    assert answer is not None and (answer["status"], answer["attempt_id"]) == ("ok", task.attempt_id)
    assert client.open_claims() == []
    retry = client.post_rollout(AttemptRollout(rollout_id=rid, attempt_id=task.attempt_id))
    assert retry is not None and retry["status"] == "duplicate"


def test_shared_client_across_asyncio_tasks_with_reclaims(
    served: Served, client: AttemptAwareClient, clock: ManualClock
) -> None:
    """Two coroutines of one client claim the same task in turn; each submits its own attempt."""
    rid = served.call(served.server.queue_task("x"))
    first_claimed, second_claimed = asyncio.Event(), asyncio.Event()
    answers: dict[str, dict[str, Any] | None] = {}

    async def straggler() -> None:
        task = await client.poll_next_task_async()
        assert task is not None
        first_claimed.set()
        await second_claimed.wait()
        answers["straggler"] = await client.post_rollout_async(plain(rid, 0.0))

    async def successor() -> None:
        await first_claimed.wait()
        clock.advance(TIMEOUT + 1)
        task = await client.poll_next_task_async()
        assert task is not None and task.claim_sequence_id == 2
        second_claimed.set()
        await asyncio.sleep(0)  # let the straggler post first, while this claim is live
        answers["successor"] = await client.post_rollout_async(plain(rid, 1.0))

    async def both() -> None:
        await asyncio.gather(straggler(), successor())
        await client.aclose()

    asyncio.run(both())
    straggler_answer, successor_answer = answers["straggler"], answers["successor"]
    assert straggler_answer is not None and successor_answer is not None
    assert (straggler_answer["status"], straggler_answer["claim_sequence_id"]) == ("dropped", 1)
    assert (successor_answer["status"], successor_answer["claim_sequence_id"]) == ("ok", 2)
    [stored] = served.call(served.server.retrieve_completed_rollouts())
    assert stored.final_reward == 1.0


def test_shared_client_across_threads_with_reclaims(
    served: Served, client: AttemptAwareClient, clock: ManualClock
) -> None:
    rid = served.call(served.server.queue_task("x"))
    first_claimed, second_claimed, straggler_posted = threading.Event(), threading.Event(), threading.Event()
    answers: dict[str, dict[str, Any] | None] = {}

    def straggler() -> None:
        poll(client)
        first_claimed.set()
        second_claimed.wait(30)
        answers["straggler"] = client.post_rollout(plain(rid, 0.0))
        straggler_posted.set()

    def successor() -> None:
        first_claimed.wait(30)
        clock.advance(TIMEOUT + 1)
        assert poll(client).claim_sequence_id == 2
        second_claimed.set()
        straggler_posted.wait(30)
        answers["successor"] = client.post_rollout(plain(rid, 1.0))

    run_threads(straggler, successor)
    straggler_answer, successor_answer = answers["straggler"], answers["successor"]
    assert straggler_answer is not None and straggler_answer["reason"] == "superseded"
    assert successor_answer is not None and successor_answer["status"] == "ok"


def run_threads(*targets: Callable[[], None]) -> None:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)


def _child_posts(client: AttemptAwareClient, rollout_id: str, results: Any) -> None:
    task = client.poll_next_task()
    answer = client.post_rollout(plain(rollout_id))
    results.put((client._transport.sync_client is not None, task and task.attempt_id, answer))  # pyright: ignore[reportPrivateUsage]


def test_nothing_pooled_crosses_a_fork(served: Served, client: AttemptAwareClient) -> None:
    served.call(served.server.queue_task("warm-up"))
    poll(client)  # the parent now holds pooled connections and an open claim
    assert client._transport.sync_client is not None  # pyright: ignore[reportPrivateUsage]
    rid = served.call(served.server.queue_task("in the child"))
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_posts, args=(client, rid, results))
    child.start()
    pooled, attempt_id, answer = results.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert pooled and attempt_id is not None
    assert answer["status"] == "ok" and answer["attempt_id"] == attempt_id
    assert len(client.open_claims()) == 1  # the parent's own claim is untouched


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_works_against_an_unpatched_upstream_server() -> None:
    with serve_in_thread(AgentLightningServer(port=free_port())) as upstream:
        rid = upstream.call(upstream.server.queue_task("x"))
        client = AttemptAwareClient(upstream.endpoint, poll_interval=0.01)
        task = client.poll_next_task()
        assert task is not None and (task.rollout_id, task.attempt_id, task.num_claims) == (rid, None, 1)
        answer = client.post_rollout(plain(rid))
        assert answer is not None and answer["status"] == "ok"
        [stored] = upstream.call(upstream.server.retrieve_completed_rollouts())
        assert stored.rollout_id == rid
        client.close()


@pytest.fixture
def leased(clock: ManualClock) -> Iterator[Served]:
    server = AttemptAwareServer(port=0, task_timeout_seconds=TIMEOUT, unresponsive_seconds=0.3, clock=clock)
    with serve_in_thread(server) as running:
        yield running


def wait_for_heartbeats(served: Served, count: int) -> None:
    """Wait until the server has received ``count`` heartbeats in all (a condition, not a timeout)."""
    ready = threading.Event()
    for _ in range(3000):
        if served.server.attempt_stats()["heartbeats"] >= count:
            return
        ready.wait(0.01)
    raise AssertionError(f"fewer than {count} heartbeats arrived")


def test_a_sync_claim_is_heartbeaten_until_submitted(leased: Served, clock: ManualClock) -> None:
    client = AttemptAwareClient(leased.endpoint, poll_interval=0.01)
    rid = leased.call(leased.server.queue_task("slow"))
    task = poll(client)
    assert task.lease_seconds == 0.3
    for beat in range(1, 6):  # the worker runs 2.5x the window on the server's clock
        wait_for_heartbeats(leased, beat)
        clock.advance(0.15)
        assert leased.run(leased.server.store.requeue_expired) == 0
    answer = client.post_rollout(plain(rid))
    assert answer is not None and answer["status"] == "ok"
    assert leased.server.attempt_stats()["requeues"] == 0
    client.close()


def test_a_heartbeat_learns_the_claim_is_lost(leased: Served, clock: ManualClock) -> None:
    client = AttemptAwareClient(leased.endpoint, poll_interval=0.01)
    leased.call(leased.server.queue_task("x"))
    task = poll(client)
    leased.call(leased.server.cancel_pending())
    stale_before = leased.server.attempt_stats()["heartbeats_stale"]
    ready = threading.Event()
    for _ in range(3000):
        if not client.is_current(task.attempt_id or ""):
            break
        ready.wait(0.01)
    assert not client.is_current(task.attempt_id or "")
    assert leased.server.attempt_stats()["heartbeats_stale"] == stale_before + 1  # and then it stopped
    client.close()


def test_async_claims_are_heartbeaten(leased: Served, clock: ManualClock) -> None:
    client = AttemptAwareClient(leased.endpoint, poll_interval=0.01)
    rid = leased.call(leased.server.queue_task("x"))

    async def work() -> dict[str, Any] | None:
        task = await client.poll_next_task_async()
        assert task is not None
        for beat in range(1, 4):
            while leased.server.attempt_stats()["heartbeats"] < beat:
                await asyncio.sleep(0.01)
            clock.advance(0.15)
        answer = await client.post_rollout_async(plain(rid))
        await client.aclose()
        return answer

    answer = asyncio.run(work())
    assert answer is not None and answer["status"] == "ok"
    assert leased.server.attempt_stats()["requeues"] == 0


def test_no_heartbeats_to_a_server_without_leases(served: Served, client: AttemptAwareClient) -> None:
    served.call(served.server.queue_task("x"))
    task = poll(client)
    assert task.lease_seconds is None
    assert client._heartbeats.thread is None  # pyright: ignore[reportPrivateUsage]


# -- long polling -------------------------------------------------------------------------------


def count_task_requests(client: AttemptAwareClient) -> list[httpx.Request]:
    """Record the client's ``GET /task`` requests as they go out."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> None:
        if request.url.path == "/task":
            sent.append(request)

    client._transport.http().event_hooks["request"].append(record)  # pyright: ignore[reportPrivateUsage]
    return sent


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_the_shim_long_polls_a_patched_server(served: Served, use_async: bool) -> None:
    """Held polls that end empty are repeated at once: the 60 s poll interval is never slept."""
    client = AttemptAwareClient(served.endpoint, poll_interval=60, poll_wait=0.2)
    polled: list[AttemptTask | None] = []

    def work() -> None:
        polled.append(asyncio.run(client.poll_next_task_async()) if use_async else client.poll_next_task())

    worker = threading.Thread(target=work)
    worker.start()
    threading.Event().wait(1.0)  # several held polls end empty meanwhile
    rid = served.call(served.server.queue_task("x"))
    worker.join(10)
    assert not worker.is_alive(), "the client slept its poll interval"
    [task] = polled
    assert task is not None and task.rollout_id == rid
    client.close()


def test_the_shim_polls_an_unpatched_server_as_upstream_does() -> None:
    """No server hold: the client sleeps ``poll_interval`` after each empty answer, as upstream's does."""
    with serve_in_thread(AgentLightningServer(port=free_port())) as upstream:
        client = AttemptAwareClient(upstream.endpoint, poll_interval=0.4)
        sent = count_task_requests(client)
        polled: list[AttemptTask | None] = []
        worker = threading.Thread(target=lambda: polled.append(client.poll_next_task()))
        worker.start()
        threading.Event().wait(1.0)
        rid = upstream.call(upstream.server.queue_task("x"))
        worker.join(10)
        [task] = polled
        assert task is not None and task.rollout_id == rid
        assert 2 <= len(sent) <= 6, len(sent)  # ~1 per 0.4 s, not a busy loop
        assert all(request.url.params["wait"] == "20.0" for request in sent)  # asked, and ignored
        client.close()
