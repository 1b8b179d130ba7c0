"""Attempt-scoped calls are forwarded while the attempt is live and refused (409, OpenAI-style) once it is not."""

from __future__ import annotations

import asyncio
import threading

import httpx
import openai
import pytest

from lightning_attempts.llm_proxy import Attempt

from .conftest import CHAT, Attempts, StartProxy, attempt_url
from .stand_in_vllm import StandInVllm

REASONS = ("superseded", "timed_out", "unresponsive", "released", "cancelled", "completed")


async def test_a_live_attempt_is_forwarded_and_liveness_is_asked_on_the_proxys_loop(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    attempt = attempts.live()
    answer = await http.post(attempt_url(server, attempt), json=CHAT)
    assert answer.status_code == 200
    assert sum(len(backend.received) for backend in backends) == 1
    assert attempts.asked == [attempt, attempt]  # before the body is read, and again before forwarding
    assert attempts.on_threads == {threading.get_ident()}
    assert attempts.in_loops == {id(asyncio.get_running_loop())}


@pytest.mark.parametrize("reason", REASONS)
async def test_a_call_of_an_attempt_no_longer_live_is_refused_before_any_backend_sees_it(
    reason: str, start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    attempt = attempts.live()
    assert (await http.post(attempt_url(server, attempt), json=CHAT)).status_code == 200
    attempts.end(attempt, reason)
    answer = await http.post(attempt_url(server, attempt), json=CHAT)
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == reason and error["type"] == "attempt_not_live"
    assert attempt[1] in error["message"] and reason in error["message"]
    assert sum(len(backend.received) for backend in backends) == 1  # only the call made while live
    stats = server.proxy.stats()
    assert (stats["refused_by_reason"], stats["forwarded_attempt"], stats["refused_not_live"]) == ({reason: 1}, 1, 1)
    assert server.proxy.router.backend_of(Attempt(*attempt)) is None  # its route is forgotten


async def test_an_attempt_never_issued_is_refused(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    answer = await http.post(attempt_url(server, ("rollout-1", "guessed")), json=CHAT)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "unknown_attempt"
    assert not any(backend.received for backend in backends)


async def test_a_failing_liveness_check_refuses_the_call(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()

    def broken(rollout_id: str, attempt_id: str) -> str | None:
        raise RuntimeError("store gone")

    server.proxy.liveness = broken
    answer = await http.post(attempt_url(server, attempts.live()), json=CHAT)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "liveness_error"
    assert not any(backend.received for backend in backends)


async def test_the_openai_client_raises_the_refusal_once_without_retrying(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm]
) -> None:
    server = await start_proxy()
    attempt = attempts.live()
    base_url = attempt_url(server, attempt, "").rstrip("/")
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused") as client:
        completion = await client.chat.completions.create(
            model="stand-in", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content
        attempts.end(attempt, "superseded")
        with pytest.raises(openai.ConflictError) as raised:
            await client.chat.completions.create(model="stand-in", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 409
    assert raised.value.code == "superseded"
    assert "no longer live" in raised.value.message
    assert server.proxy.stats()["refused"] == 1  # x-should-retry: false, where a 409 is otherwise retried twice
    assert sum(len(backend.received) for backend in backends) == 1
