"""The client shim's own transport: retries, error answers and timeouts (respx, no server)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
import respx

from lightning_attempts import AttemptAwareClient, AttemptRollout
from lightning_attempts.models import WAIT_HEADER

ENDPOINT = "http://trainer.test"
ROLLOUT_URL = ENDPOINT + "/rollout"
OK = httpx.Response(200, json={"status": "ok", "rollout_id": "r"})
DROPPED = httpx.Response(409, json={"status": "dropped", "reason": "superseded", "rollout_id": "r", "attempt_id": "a"})


@pytest.fixture
def client() -> Iterator[AttemptAwareClient]:
    client = AttemptAwareClient(ENDPOINT, poll_interval=0.01, timeout=2.5, submit_attempts=3)
    yield client
    client.close()


def rollout() -> AttemptRollout:
    return AttemptRollout(rollout_id="r", attempt_id="a", final_reward=1.0)


def post(client: AttemptAwareClient, use_async: bool) -> dict[str, object] | None:
    if use_async:
        return asyncio.run(client.post_rollout_async(rollout()))
    return client.post_rollout(rollout())


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@respx.mock
def test_connection_errors_are_retried(client: AttemptAwareClient, use_async: bool) -> None:
    route = respx.post(ROLLOUT_URL).mock(side_effect=[httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), OK])
    assert post(client, use_async) == {"status": "ok", "rollout_id": "r"}
    assert route.call_count == 3
    requests = cast(list[httpx.Request], [call.request for call in route.calls])  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    assert len({request.read() for request in requests}) == 1  # the same submission each time


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@respx.mock
def test_server_errors_are_retried(client: AttemptAwareClient, use_async: bool) -> None:
    route = respx.post(ROLLOUT_URL).mock(side_effect=[httpx.Response(503), httpx.Response(500), OK])
    assert post(client, use_async) == {"status": "ok", "rollout_id": "r"}
    assert route.call_count == 3


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@respx.mock
def test_a_drop_is_returned_and_logged_not_retried(
    client: AttemptAwareClient, use_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    route = respx.post(ROLLOUT_URL).mock(return_value=DROPPED)
    with caplog.at_level(logging.WARNING, logger="lightning_attempts.client"):
        answer = post(client, use_async)
    assert answer is not None and (answer["status"], answer["reason"]) == ("dropped", "superseded")
    assert route.call_count == 1
    assert any("dropped r (attempt a)" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@respx.mock
def test_giving_up_returns_none_like_upstream(client: AttemptAwareClient, use_async: bool) -> None:
    route = respx.post(ROLLOUT_URL).mock(side_effect=httpx.ConnectError("refused"))
    assert post(client, use_async) is None
    assert route.call_count == 3  # submit_attempts


@respx.mock
def test_other_client_errors_are_not_retried(client: AttemptAwareClient) -> None:
    route = respx.post(ROLLOUT_URL).mock(return_value=httpx.Response(422, json={"detail": []}))
    assert client.post_rollout(rollout()) is None
    assert route.call_count == 1


@respx.mock
def test_the_attempt_id_goes_on_the_wire(client: AttemptAwareClient) -> None:
    route = respx.post(ROLLOUT_URL).mock(return_value=OK)
    client.post_rollout(rollout())
    body = route.calls.last.request.read()
    assert b'"attempt_id":"a"' in body.replace(b" ", b"")
    assert route.calls.last.request.headers["X-AgentLightning-Client"] == "true"  # upstream's header kept


def test_upstream_timeout_is_honoured(client: AttemptAwareClient) -> None:
    timeout = client._transport.http().timeout  # pyright: ignore[reportPrivateUsage]
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (2.5, 2.5, 2.5, 2.5)

    async def async_timeout() -> httpx.Timeout:
        return client._transport.ahttp().timeout  # pyright: ignore[reportPrivateUsage]

    assert asyncio.run(async_timeout()).read == 2.5


@respx.mock
def test_polling_keeps_upstream_semantics(client: AttemptAwareClient) -> None:
    """Poll until a task is available (errors and empty answers just poll again)."""
    task: dict[str, object] = {
        "rollout_id": "r",
        "input": {},
        "attempt_id": "a",
        "claim_sequence_id": 2,
        "num_claims": 2,
    }
    route = respx.get(ENDPOINT + "/task").mock(
        side_effect=[
            httpx.ConnectError("down"),
            httpx.Response(200, json={"is_available": False}),
            httpx.Response(200, json={"is_available": True, "task": task}),
        ]
    )
    polled = client.poll_next_task()
    assert polled is not None and (polled.attempt_id, polled.claim_sequence_id) == ("a", 2)
    assert route.call_count == 3
    assert [claim.attempt_id for claim in client.open_claims()] == ["a"]


def test_event_loops_get_their_own_connections(client: AttemptAwareClient) -> None:
    async def pool() -> httpx.AsyncClient:
        return client._transport.ahttp()  # pyright: ignore[reportPrivateUsage]

    first, second = asyncio.run(pool()), asyncio.run(pool())
    assert first is not second


# -- long polling -------------------------------------------------------------------------------

TASK_URL = ENDPOINT + "/task"
EMPTY = {"is_available": False, "task": None}


def held(seconds: str = "20") -> httpx.Response:
    return httpx.Response(200, json=EMPTY, headers={WAIT_HEADER: seconds})


@respx.mock
def test_every_poll_asks_to_be_held_and_its_timeout_covers_the_wait() -> None:
    client = AttemptAwareClient(ENDPOINT, timeout=2.5, poll_wait=7)
    route = respx.get(TASK_URL).mock(return_value=held("7"))
    client._request_json(TASK_URL)  # pyright: ignore[reportPrivateUsage]
    request = route.calls.last.request
    assert request.url.params["wait"] == "7"
    assert request.extensions["timeout"]["read"] == 2.5 + 7
    client.close()


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@respx.mock
def test_the_poll_interval_is_slept_unless_the_server_held_the_poll(use_async: bool) -> None:
    client = AttemptAwareClient(ENDPOINT, poll_interval=60)

    def held_until_the_wait_ended(request: httpx.Request) -> httpx.Response:
        time.sleep(0.06)
        return held("0.05")

    answers: list[tuple[Any, float]] = [
        (httpx.Response(200, json=EMPTY), 60),  # an unpatched server: as upstream
        (httpx.ConnectError("down"), 60),  # a failure says nothing
        (held("0"), 60),  # a patched server that did not hold it (stopping, or max_poll_wait=0)
        (httpx.Response(200, text="not json", headers={WAIT_HEADER: "20"}), 60),
        (held_until_the_wait_ended, 0),  # poll again at once
        (held("20"), 20),  # held, it says, yet answered at once: no busy loop
    ]
    respx.get(TASK_URL).mock(side_effect=[answer for answer, _ in answers])

    async def pauses_async() -> list[float]:
        pauses: list[float] = []
        for _ in answers:
            await client._request_json_async(TASK_URL)  # pyright: ignore[reportPrivateUsage]
            pauses.append(client.poll_interval)
        await client.aclose()
        return pauses

    def pauses_sync() -> list[float]:
        pauses: list[float] = []
        for _ in answers:
            client._request_json(TASK_URL)  # pyright: ignore[reportPrivateUsage]
            pauses.append(client.poll_interval)
        return pauses

    pauses = asyncio.run(pauses_async()) if use_async else pauses_sync()
    assert pauses[:5] == [60, 60, 60, 60, 0]
    assert 19 < pauses[5] <= 20  # what is left of the wait after the (instant) poll
    client.close()


@respx.mock
def test_the_pause_is_this_clients_and_this_threads_only() -> None:
    client, other = AttemptAwareClient(ENDPOINT, poll_interval=60), AttemptAwareClient(ENDPOINT, poll_interval=30)
    respx.get(TASK_URL).mock(return_value=held())
    client._request_json(TASK_URL)  # pyright: ignore[reportPrivateUsage]
    assert client.poll_interval <= 20 and other.poll_interval == 30
    seen: list[float] = []
    thread = threading.Thread(target=lambda: seen.append(client.poll_interval))
    thread.start()
    thread.join()
    assert seen == [60]
    client.poll_interval = 5  # setting it still works
    assert client._poll_interval == 5  # pyright: ignore[reportPrivateUsage]
    client.close()
    other.close()


@respx.mock
def test_a_dropped_client_is_freed_at_once() -> None:
    """Its parts hold it weakly: no reference cycle keeps it (and its pooled connections) until a collection."""
    task: dict[str, object] = {"rollout_id": "r", "input": {}, "attempt_id": "a"}
    respx.get(TASK_URL).mock(return_value=httpx.Response(200, json={"is_available": True, "task": task}))
    respx.post(ROLLOUT_URL).mock(return_value=OK)
    client = AttemptAwareClient(ENDPOINT, poll_interval=0.01)
    assert client.poll_next_task() is not None
    assert client.post_rollout(rollout()) is not None
    dropped = weakref.ref(client)
    gc.disable()
    try:
        del client
        assert dropped() is None
    finally:
        gc.enable()
