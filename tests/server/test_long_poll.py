"""Long polls (``GET /task?wait=S``) and requeues on time, on a real server; the hand-off races in-process."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from lightning_attempts import AttemptAwareDataStore, AttemptAwareServer
from lightning_attempts.models import WAIT_HEADER
from lightning_attempts.server import ParkedPolls
from lightning_attempts.testing import ServerThread, serve_in_thread

from ..waiting import until

Served = ServerThread[AttemptAwareServer]
LONG = 30.0
"""A wait no test sits through: a poll answered before it passes was answered by an event."""


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def long_poll(endpoint: str, wait: float = LONG) -> httpx.Response:
    return httpx.get(endpoint + "/task", params={"wait": wait}, timeout=wait + 10)


def parked(served: Served) -> int:
    return served.server.attempt_stats()["polls_parked"]


def answered(poll: Future[httpx.Response], within: float = 10.0) -> dict[str, Any]:
    """The poll's answer, which must come long before its wait would have ended."""
    response = poll.result(timeout=within)
    assert response.status_code == 200
    return response.json()


def test_a_parked_poll_gets_a_task_queued_later(served: Served, pool: ThreadPoolExecutor) -> None:
    poll = pool.submit(long_poll, served.endpoint)
    until(lambda: parked(served) == 1)
    rid = served.call(served.server.queue_task("x"))
    response = poll.result(timeout=10)
    assert response.json()["task"]["rollout_id"] == rid
    assert response.json()["task"]["claim_sequence_id"] == 1
    assert response.headers[WAIT_HEADER] == "20"  # the default cap
    assert parked(served) == 0


def test_first_come_first_served(served: Served, pool: ThreadPoolExecutor) -> None:
    first = pool.submit(long_poll, served.endpoint)
    until(lambda: parked(served) == 1)
    second = pool.submit(long_poll, served.endpoint)
    until(lambda: parked(served) == 2)
    rid = served.call(served.server.queue_task("one"))
    assert answered(first)["task"]["rollout_id"] == rid
    assert not second.done() and parked(served) == 1  # the second keeps waiting
    later = served.call(served.server.queue_task("two"))
    assert answered(second)["task"]["rollout_id"] == later


def raw_poll(endpoint: str, wait: float = LONG) -> socket.socket:
    """Send ``GET /task?wait=...`` on a raw socket, to hang up on it."""
    url = urlsplit(endpoint)
    sock = socket.create_connection((url.hostname, url.port or 80))
    sock.sendall(f"GET /task?wait={wait} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    return sock


def test_a_poll_whose_client_left_takes_nothing(served: Served, pool: ThreadPoolExecutor) -> None:
    gone = raw_poll(served.endpoint)
    until(lambda: parked(served) == 1)
    staying = pool.submit(long_poll, served.endpoint)
    until(lambda: parked(served) == 2)
    gone.close()
    until(lambda: parked(served) == 1)  # it left the queue
    rid = served.call(served.server.queue_task("x"))
    assert answered(staying)["task"]["rollout_id"] == rid
    stats = served.server.attempt_stats()
    assert (stats["claims"], stats["claims_undelivered"], stats["claims_in_flight"]) == (1, 0, 1)


@pytest.mark.parametrize("busy", [0.0, 0.3])
def test_a_poll_whose_client_hung_up_while_the_loop_was_busy_takes_nothing(served: Served, busy: float) -> None:
    """The hang-up is read after the task is queued, in the same turn of the loop: the claim goes back.

    In one loop callback the client hangs up, the loop stays busy (say, validating a large
    ``POST /rollout``), then a task is queued: it is claimed for the parked poll before the
    poll's watcher has seen the hang-up.
    """
    gone = raw_poll(served.endpoint)
    until(lambda: parked(served) == 1)
    tasks: list[asyncio.Task[str]] = []

    def hang_up_while_busy() -> None:
        gone.close()
        time.sleep(busy)
        tasks.append(served.loop.create_task(served.server.queue_task("x")))

    served.loop.call_soon_threadsafe(hang_up_while_busy)
    until(lambda: parked(served) == 0 and len(tasks) == 1 and tasks[0].done())
    until(lambda: served.server.attempt_stats()["queued"] == 1)
    stats = served.server.attempt_stats()
    assert (stats["claims_in_flight"], stats["queued"]) == (0, 1), stats
    assert stats["claims"] - stats["claims_undelivered"] == 0, stats


def test_without_wait_task_answers_at_once_as_upstream(served: Served) -> None:
    response = httpx.get(served.endpoint + "/task")
    assert response.json() == {"is_available": False, "task": None}
    assert WAIT_HEADER not in response.headers


@pytest.mark.parametrize("wait", ["-1", "soon", "nan", "inf", ""])
def test_a_bad_wait_is_refused(served: Served, wait: str) -> None:
    served.call(served.server.queue_task("x"))
    response = httpx.get(served.endpoint + "/task", params={"wait": wait})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "wait"]
    stats = served.server.attempt_stats()
    assert (stats["claims"], stats["queued"]) == (0, 1)


def test_the_server_caps_the_wait() -> None:
    with serve_in_thread(AttemptAwareServer(port=0, max_poll_wait=0.2)) as served:
        response = long_poll(served.endpoint, 3600)
        assert response.json()["is_available"] is False
        assert response.headers[WAIT_HEADER] == "0.2"
        zero = httpx.get(served.endpoint + "/task", params={"wait": 0})
        assert zero.headers[WAIT_HEADER] == "0"


def test_bad_max_poll_wait_is_refused() -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_poll_wait"):
            AttemptAwareServer(max_poll_wait=bad)


def test_stopping_answers_parked_polls(pool: ThreadPoolExecutor) -> None:
    running = ServerThread(AttemptAwareServer(port=0))
    running.start()
    try:
        poll = pool.submit(long_poll, running.endpoint)
        until(lambda: parked(running) == 1)
        started = time.monotonic()
        running.close()  # stop()
        assert time.monotonic() - started < LONG / 2  # not held until the wait ended
        response = poll.result(timeout=10)
        assert response.json()["is_available"] is False
        assert response.headers[WAIT_HEADER] == "0"  # not held: a client sleeps its poll interval
    finally:
        running.close()


# -- requeues on time: the timer is the thing under test, so the clock is real -------------------


def test_an_expired_claim_is_requeued_to_a_parked_poll_with_no_traffic(pool: ThreadPoolExecutor) -> None:
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=1.0)) as served:
        rid = served.call(served.server.queue_task("x"))
        first = httpx.get(served.endpoint + "/task").json()["task"]
        poll = pool.submit(long_poll, served.endpoint)  # parks: nothing is claimable yet
        task = answered(poll)["task"]
        assert (task["rollout_id"], task["claim_sequence_id"]) == (rid, 2)
        assert task["attempt_id"] != first["attempt_id"]
        assert served.server.attempt_stats()["requeues"] == 1


def test_a_dead_workers_claim_is_requeued_after_its_silence(pool: ThreadPoolExecutor) -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=3600, unresponsive_seconds=1.0)
    with serve_in_thread(server) as served:
        rid = served.call(server.queue_task("x"))
        first = httpx.get(served.endpoint + "/task").json()["task"]
        beat = {"rollout_id": rid, "attempt_id": first["attempt_id"]}
        assert httpx.post(served.endpoint + "/heartbeat", json=beat).status_code == 200
        poll = pool.submit(long_poll, served.endpoint)  # the worker dies: no more heartbeats
        task = answered(poll)["task"]
        assert (task["rollout_id"], task["claim_sequence_id"]) == (rid, 2)
        assert server.attempt_stats()["requeues_unresponsive"] == 1


def test_the_timer_sleeps_with_no_claim_and_rearms_on_the_next() -> None:
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=0.2)) as served:
        server = served.server
        requeues = 0
        for sample in range(2):  # each claim is made while none is in flight, over HTTP or in-process
            served.call(server.queue_task(sample))
            assert httpx.get(served.endpoint + "/task").json()["is_available"]
            requeues += 1
            until(lambda expected=requeues: server.attempt_stats()["requeues"] == expected)
            assert served.run(lambda: server.store.claim()) is not None
            requeues += 1
            until(lambda expected=requeues: server.attempt_stats()["requeues"] == expected)
            served.run(lambda: server.store.cancel())


# -- the hand-off races, in-process: the order in which the event loop runs things is the point ---


class Channel:
    """A request's ASGI receive channel, whose disconnect the test sends."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self.messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})

    async def receive(self) -> MutableMapping[str, Any]:
        return await self.messages.get()

    def disconnect(self) -> None:
        self.messages.put_nowait({"type": "http.disconnect"})


def polls_on(store: AttemptAwareDataStore) -> ParkedPolls:
    polls = ParkedPolls(store)
    store.on_claimable = polls.claimable
    return polls


async def park(polls: ParkedPolls, channel: Channel) -> asyncio.Task[Any]:
    """A poll parked, its disconnect watcher waiting on the channel."""
    waiting = asyncio.create_task(polls.wait(channel.receive, LONG))
    for _ in range(5):
        await asyncio.sleep(0)
    assert channel.messages.empty() and not waiting.done()
    return waiting


async def test_a_claim_made_for_a_client_that_left_is_given_back() -> None:
    store = AttemptAwareDataStore()
    polls = polls_on(store)
    left, staying = Channel(), Channel()
    first = await park(polls, left)
    second = await park(polls, staying)
    # The task is claimed for the first poll, and its client's disconnect is seen before it resumes.
    rid = await store.add_task("x")
    left.disconnect()
    assert await first is None
    task = await asyncio.wait_for(second, 10)
    assert task is not None and (task.rollout_id, task.claim_sequence_id) == (rid, 1)  # the undone claim is gone
    stats = store.stats()
    assert (stats["claims"], stats["claims_undelivered"], stats["claims_in_flight"]) == (2, 1, 1)
    assert [entry["attempt_id"] for entry in store.history(rid) or []] == [task.attempt_id]


async def test_a_poll_cancelled_after_its_claim_gives_it_back() -> None:
    store = AttemptAwareDataStore()
    polls = polls_on(store)
    waiting = await park(polls, Channel())
    await store.add_task("x")
    await asyncio.sleep(0)  # the hand-out claims the task for the poll, which has not resumed yet
    assert store.stats()["claims_in_flight"] == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    stats = store.stats()
    assert (stats["claims_in_flight"], stats["queued"], stats["claims_undelivered"]) == (0, 1, 1)


async def test_close_answers_every_parked_poll_and_parks_no_more() -> None:
    store = AttemptAwareDataStore()
    polls = polls_on(store)
    waiting = [await park(polls, Channel()) for _ in range(3)]
    polls.close()
    assert await asyncio.gather(*waiting) == [None, None, None]
    await store.add_task("x")
    await asyncio.sleep(0)
    assert store.stats()["queued"] == 1 and polls.closing


def test_many_polls_and_tasks_each_task_claimed_once(served: Served) -> None:
    """Polls parked, arriving and leaving while tasks are queued: each task is claimed by exactly one poll."""
    tasks, pollers = 40, 8
    claimed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        with httpx.Client(base_url=served.endpoint, timeout=30) as http:
            while not stop.is_set():
                body = http.get("/task", params={"wait": 0.2}).json()
                if body["is_available"]:
                    with lock:
                        claimed.append(body["task"]["rollout_id"])

    threads = [threading.Thread(target=worker) for _ in range(pollers)]
    for thread in threads:
        thread.start()
    try:
        queued = {served.call(served.server.queue_task(i)) for i in range(tasks)}
        until(lambda: len(claimed) >= tasks)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert sorted(claimed) == sorted(queued)
    assert served.server.attempt_stats()["claims"] == tasks
