"""RemoteServer, the producer client, against a real server: the in-process methods' results, over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest
import respx
from agentlightning.types import PromptTemplate

from lightning_attempts import AttemptAwareServer, AttemptRollout, ServerNotRunning
from lightning_attempts.client import RemoteServer
from lightning_attempts.errors import LightningAttemptsError, RequestRefused, Unauthorized
from lightning_attempts.producer_models import MAX_TASKS, AttemptRecord
from lightning_attempts.testing import serve_in_thread

from ..producing import LONG, Served, entered_waits, serving

KEY = "producer-client-key"
RESOURCES = {"prompt": PromptTemplate(template="Say hi to {name}.", engine="f-string")}


@pytest.fixture
def served() -> Iterator[Served]:
    with serving(max_poll_wait=LONG) as running:
        yield running


@pytest.fixture
def remote(served: Served, monkeypatch: pytest.MonkeyPatch) -> RemoteServer:
    monkeypatch.delenv("AGL_KEY", raising=False)
    return RemoteServer(served.endpoint)


def complete(served: Served, reward: float = 1.0, headers: dict[str, str] | None = None) -> str:
    """A worker: claim the next task and post its result; its rollout id."""
    with httpx.Client(base_url=served.endpoint, headers=headers) as http:
        task = http.get("/task").json()["task"]
        body = {"rollout_id": task["rollout_id"], "attempt_id": task["attempt_id"], "final_reward": reward}
        assert http.post("/rollout", json=body).json()["status"] == "ok"
        return task["rollout_id"]


async def entered(semaphore: threading.Semaphore) -> None:
    assert await asyncio.to_thread(semaphore.acquire, timeout=10)


def ids(rollouts: Iterable[Any]) -> list[str]:
    return [rollout.rollout_id for rollout in rollouts]


def failing(target: Any, name: str, times: int) -> None:
    """``target.<name>`` raises on its first ``times`` calls, so that the server answers 500; then it works."""
    method, left = getattr(target, name), [times]

    def failing_first(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise RuntimeError(f"{name} fails on purpose")
        return method(*args, **kwargs)

    setattr(target, name, failing_first)


async def test_a_batch_queued_published_and_retrieved(served: Served, remote: RemoteServer) -> None:
    async with remote:
        resources_id = await remote.update_resources(RESOURCES)
        rollout_ids = await remote.queue_tasks([{"name": "Ada"}, {"name": "Alan"}], mode="train", metadata={"k": 1})
        single = await remote.queue_task({"name": "Grace"}, resources_id=resources_id)
        assert await remote.queue_tasks([]) == []
        tasks = [served.run(served.server.store.claim) for _ in range(3)]
        assert [(t.rollout_id, t.input, t.mode, t.resources_id) for t in tasks if t] == [
            (rollout_ids[0], {"name": "Ada"}, "train", None),
            (rollout_ids[1], {"name": "Alan"}, "train", None),
            (single, {"name": "Grace"}, None, resources_id),
        ]
        latest = await served.server.store.get_latest_resources()
        assert latest is not None and latest.resources == RESOURCES
        for task in tasks:
            assert task is not None and task.attempt_id is not None
            result = AttemptRollout(rollout_id=task.rollout_id, attempt_id=task.attempt_id, final_reward=1.0)
            served.run(lambda r=result: served.server.store.submit(r, r.attempt_id))
        taken = await remote.get_completed_rollout(single)
        assert isinstance(taken, AttemptRollout) and taken.attempt_id == tasks[2].attempt_id  # type: ignore[union-attr]
        assert await remote.get_completed_rollout(single) is None  # taken, as upstream's takes it
        assert (await remote.rollout_state(rollout_ids[0])).status == "stored"
        assert sorted(ids(await remote.retrieve_completed_rollouts())) == sorted(rollout_ids)
        assert await remote.retrieve_completed_rollouts() == []
        assert (await remote.attempt_stats())["claims"] == 3


async def test_a_batch_over_the_task_limit_is_queued_in_several_requests_in_order(
    served: Served, remote: RemoteServer
) -> None:
    rollout_ids = await remote.queue_tasks(range(2 * MAX_TASKS + 1))
    queued = served.run(lambda: list(served.server.store._book.queue))  # pyright: ignore[reportPrivateUsage]
    assert len(set(rollout_ids)) == 2 * MAX_TASKS + 1 and queued == rollout_ids
    await remote.stop()


async def test_wait_for_rollouts_returns_on_the_last_result_and_takes_nothing(
    served: Served, remote: RemoteServer
) -> None:
    first, second = await remote.queue_tasks([1, 2])
    waits = entered_waits(served)
    waiting = asyncio.ensure_future(remote.wait_for_rollouts([first, second]))
    await entered(waits)
    await asyncio.to_thread(complete, served, 0.25)
    await asyncio.to_thread(complete, served, 0.75)
    rollouts = await asyncio.wait_for(waiting, 10)
    assert [(r.rollout_id, r.final_reward) for r in rollouts] == [(first, 0.25), (second, 0.75)]
    assert sorted(ids(await remote.retrieve_completed_rollouts())) == sorted([first, second])


async def test_wait_for_rollouts_outlasts_the_server_cap_with_held_requests() -> None:
    """The server holds each request at most max_poll_wait: the client asks again until its own timeout."""
    with serving(max_poll_wait=0.05) as served:
        remote = RemoteServer(served.endpoint)
        (rollout_id,) = await remote.queue_tasks(["x"])
        waits = entered_waits(served)
        waiting = asyncio.ensure_future(remote.wait_for_rollouts([rollout_id], timeout=LONG))
        for _ in range(3):  # three held requests, each answered with the task pending
            await entered(waits)
        assert not waiting.done()
        await asyncio.to_thread(complete, served)
        assert ids(await asyncio.wait_for(waiting, 10)) == [rollout_id]
        await remote.stop()


async def test_a_server_that_holds_no_wait_is_not_polled_in_a_loop() -> None:
    with serving(max_poll_wait=0) as served:
        remote = RemoteServer(served.endpoint)
        (rollout_id,) = await remote.queue_tasks(["never done"])
        waits: list[float | None] = []
        wait = remote._wait  # pyright: ignore[reportPrivateUsage]

        async def counted(rollout_ids: list[str], timeout: float | None) -> Any:
            waits.append(timeout)
            return await wait(rollout_ids, timeout)

        remote._wait = counted  # type: ignore[method-assign]
        assert await remote.wait_for_rollouts([rollout_id], timeout=1.5) == []
        assert 2 <= len(waits) <= 3, waits  # one a second (NO_HOLD_PAUSE), not as fast as the server answers
        await remote.stop()


async def test_wait_for_rollouts_with_a_timeout_returns_what_is_stored(served: Served, remote: RemoteServer) -> None:
    done, pending = await remote.queue_tasks([1, 2])
    await asyncio.to_thread(complete, served)
    assert ids(await remote.wait_for_rollouts([done, pending], timeout=0)) == [done]
    assert ids(await remote.wait_for_rollouts([done, pending], timeout=0.1)) == [done]
    with pytest.raises(ValueError, match="rollout-nope"):
        await remote.wait_for_rollouts([done, "rollout-nope"])


async def test_poll_completed_rollout_takes_the_result_once_stored(served: Served, remote: RemoteServer) -> None:
    rollout_id = await remote.queue_task("x")
    waits = entered_waits(served)
    polling = asyncio.ensure_future(remote.poll_completed_rollout(rollout_id))
    await entered(waits)
    await asyncio.to_thread(complete, served, 0.5)
    rollout = await asyncio.wait_for(polling, 10)
    assert rollout is not None and (rollout.rollout_id, rollout.final_reward) == (rollout_id, 0.5)
    assert await remote.retrieve_completed_rollouts() == []  # taken


async def test_poll_completed_rollout_returns_none_when_no_result_will_come(
    served: Served, remote: RemoteServer
) -> None:
    cancelled, pending = await remote.queue_tasks([1, 2])
    waits = entered_waits(served)
    polling = asyncio.ensure_future(remote.poll_completed_rollout(cancelled))
    await entered(waits)
    assert await remote.cancel_pending([cancelled]) == [cancelled]
    assert await asyncio.wait_for(polling, 10) is None  # at once, not at a timeout
    assert await remote.poll_completed_rollout(pending, timeout=0.1) is None
    with pytest.raises(RequestRefused) as refused:
        await remote.poll_completed_rollout("rollout-nope")
    assert refused.value.status == 404


async def test_cancel_pending_cancels_every_pending_task(served: Served, remote: RemoteServer) -> None:
    done, *pending = await remote.queue_tasks([1, 2, 3])
    await asyncio.to_thread(complete, served)
    assert await remote.cancel_pending(["rollout-nope", done]) == []
    assert await remote.cancel_pending() == pending
    assert ids(await remote.wait_for_rollouts([done, *pending])) == [done]


async def test_cancel_pending_after_a_lost_answer_names_the_tasks_cancelled(
    served: Served, remote: RemoteServer
) -> None:
    pending = await remote.queue_tasks([1, 2])
    send = remote._transport._asend  # pyright: ignore[reportPrivateUsage]
    lost: list[httpx.Response] = []

    async def losing_the_first_answer(request: Any) -> httpx.Response:
        response = await send(request)
        if not lost:  # the server cancelled both, but its answer never arrives
            lost.append(response)
            raise httpx.ReadError("connection reset")
        return response

    remote._transport._asend = losing_the_first_answer  # type: ignore[method-assign]
    assert await remote.cancel_pending() == pending
    assert len(lost) == 1 and lost[0].json() == {"cancelled": pending}
    await remote.stop()


async def test_the_retry_log_names_what_was_being_done(
    served: Served, remote: RemoteServer, caplog: pytest.LogCaptureFixture
) -> None:
    (rollout_id,) = await remote.queue_tasks(["x"])
    await asyncio.to_thread(complete, served)
    failing(served.server.store, "stored", times=1)  # the wait's first request fails
    failing(served.server.store, "retrieve_completed_rollouts", times=1)  # and the take's
    with caplog.at_level(logging.WARNING, logger="lightning_attempts.client"):
        assert ids(await remote.wait_for_rollouts([rollout_id])) == [rollout_id]
        assert ids(await remote.retrieve_completed_rollouts()) == [rollout_id]
    retries = [record.getMessage() for record in caplog.records if record.name == "lightning_attempts.client"]
    assert [message.split(" failed (")[0] for message in retries] == ["Waiting for results", "Taking results"]
    assert all("500 Internal Server Error" in message and message.endswith("retry 1 of 4") for message in retries)
    await remote.stop()


async def test_a_server_failing_on_every_try_raises_server_not_running(served: Served) -> None:
    """A 5xx after the retries, from start() too, is the package's documented exception, the httpx one its cause."""
    remote = RemoteServer(served.endpoint, attempts=2)
    (rollout_id,) = await remote.queue_tasks(["x"])
    failing(served.server.store, "stored", times=2)
    failing(served.server.store, "stats", times=1)
    with pytest.raises(ServerNotRunning, match="failed on each of 2 tries") as failed:
        await remote.wait_for_rollouts([rollout_id])
    with pytest.raises(ServerNotRunning, match="the server failed") as failed_to_start:
        await remote.start()
    for error in (failed.value, failed_to_start.value):
        assert isinstance(error, LightningAttemptsError) and "500 Internal Server Error" in str(error)
        assert isinstance(error.__cause__, httpx.HTTPStatusError) and error.__cause__.response.status_code == 500
    await remote.start()  # the server works again
    await remote.stop()


async def test_the_key_comes_from_agl_key_or_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(api_key=KEY) as served:
        monkeypatch.setenv("AGL_KEY", KEY)
        assert await RemoteServer(served.endpoint).queue_tasks([1])
        for refused in (RemoteServer(served.endpoint, api_key=""), RemoteServer(served.endpoint, api_key="wrong")):
            with pytest.raises(Unauthorized):
                await refused.start()
            with pytest.raises(Unauthorized):
                await refused.queue_task("x")
        monkeypatch.delenv("AGL_KEY")
        assert await RemoteServer(served.endpoint, api_key=KEY).cancel_pending() != []


async def test_unauthorized_names_the_call_refused_not_the_route_start_probes() -> None:
    with serving(api_key=KEY) as served:
        refused = RemoteServer(served.endpoint, api_key="wrong")
        with pytest.raises(Unauthorized) as error:
            await refused.start()
        expected = f"RemoteServer.start() (or async with RemoteServer(...)): the server at {served.endpoint} refused"
        assert str(error.value).startswith(expected) and "/attempts/stats" not in str(error.value)
        with pytest.raises(Unauthorized, match=r"^Queueing tasks: the server at .* refused it: no or wrong API key"):
            await refused.queue_task("x")
        await refused.stop()


async def test_attempt_history_reads_a_tasks_claims_typed(served: Served, remote: RemoteServer) -> None:
    async with remote:
        [rollout_id] = await remote.queue_tasks([{"name": "Ada"}])
        assert await remote.attempt_history(rollout_id) == []  # queued, never claimed
        assert complete(served) == rollout_id  # a worker claims it and posts its result
        history = await remote.attempt_history(rollout_id)
        assert history is not None and [(r.claim_sequence_id, r.outcome) for r in history] == [(1, "completed")]
        assert isinstance(history[0], AttemptRecord) and history[0].ended_at is not None
        assert history == [AttemptRecord.model_validate(e) for e in served.server.attempt_history(rollout_id) or []]
        assert await remote.attempt_history("never-queued") is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_start_returns_once_a_server_starting_later_answers() -> None:
    port = free_port()
    remote, refused = RemoteServer(f"http://127.0.0.1:{port}"), asyncio.Event()
    send = remote._transport.asend  # pyright: ignore[reportPrivateUsage]

    async def noted(request: Any) -> Any:
        try:
            return await send(request)
        except httpx.TransportError:
            refused.set()
            raise

    remote._transport.asend = noted  # type: ignore[method-assign]
    starting = asyncio.ensure_future(remote.start(timeout=LONG))
    await asyncio.wait_for(refused.wait(), 10)  # its first try found nothing
    assert not starting.done()
    server = AttemptAwareServer(port=port, producer_api=True)
    with serve_in_thread(server):
        await asyncio.wait_for(starting, 10)


async def test_start_says_when_no_server_answers() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ServerNotRunning, match="No server answers"):
        await RemoteServer(endpoint).start(timeout=0.3)
    with pytest.raises(ServerNotRunning, match="No answer"):
        await RemoteServer(endpoint, attempts=1).queue_task("x")
    with respx.mock:
        respx.get(f"{endpoint}/attempts/stats").mock(return_value=httpx.Response(404))
        with pytest.raises(ServerNotRunning, match="no lightning-attempts server"):
            await RemoteServer(endpoint).start()


async def test_a_request_is_retried_with_the_same_request_id() -> None:
    """A retry after a lost answer must be recognisable as one: the server then answers it as the first time."""
    endpoint = "http://producer.test"
    bodies: list[dict[str, Any]] = []
    answers = iter([httpx.ReadError("lost"), httpx.Response(503), httpx.Response(200, json={"rollout_ids": ["r1"]})])

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        outcome = next(answers)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with respx.mock:
        respx.post(f"{endpoint}/tasks").mock(side_effect=answer)
        assert await RemoteServer(endpoint).queue_task("x") == "r1"
    assert len(bodies) == 3 and len({body["request_id"] for body in bodies}) == 1 and bodies[0]["request_id"]
    with respx.mock:
        respx.post(f"{endpoint}/tasks").mock(return_value=httpx.Response(503, json={"detail": "Server not fully"}))
        with pytest.raises(ServerNotRunning, match="not running"):
            await RemoteServer(endpoint, attempts=2).queue_task("x")
        respx.post(f"{endpoint}/resources").mock(return_value=httpx.Response(422, json={"detail": [{"loc": ["x"]}]}))
        with pytest.raises(RequestRefused) as refused:
            await RemoteServer(endpoint).update_resources(RESOURCES)
        assert (refused.value.status, refused.value.detail) == (422, [{"loc": ["x"]}])
