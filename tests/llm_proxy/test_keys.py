"""With a key, plain ``/v1`` calls need it; attempt-scoped URLs need none; refusals summarised, bodies never logged."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from lightning_attempts.llm_proxy import RefusalSummary

from .conftest import CHAT, Attempts, StartProxy, attempt_url
from .stand_in_vllm import StandInVllm

KEY = "proxy-key-0123456789"
SECRET_PROMPT = "the secret prompt 4f1c"


async def test_plain_calls_need_the_key_as_bearer_or_x_api_key(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(api_key=KEY)
    url = f"{server.endpoint}/v1/chat/completions"
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": KEY[:-1]}, {"authorization": KEY}):
        answer = await http.post(url, json=CHAT, headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"
    assert not any(backend.received for backend in backends)
    for headers in ({"authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}, {"x-api-key": KEY}):
        assert (await http.post(url, json=CHAT, headers=headers)).status_code == 200, headers
    received = [r for backend in backends for r in backend.received]
    assert len(received) == 3
    assert not any("authorization" in r.headers or "x-api-key" in r.headers for r in received)  # the key stays here
    stats = server.proxy.stats()
    assert (stats["refused_by_reason"], stats["refused_not_live"]) == ({"unauthorized": 4}, 0)  # not a stale call


async def test_unknown_paths_need_the_key_too(start_proxy: StartProxy, http: httpx.AsyncClient) -> None:
    server = await start_proxy(api_key=KEY)
    assert (await http.get(f"{server.endpoint}/admin")).status_code == 401


async def test_attempt_scoped_urls_need_no_key_and_carry_none_to_the_backend(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(api_key=KEY)
    answer = await http.post(attempt_url(server, attempts.live()), json=CHAT, headers={"x-api-key": KEY})
    assert answer.status_code == 200
    (received,) = [r for backend in backends for r in backend.received]
    assert "x-api-key" not in received.headers


async def test_refusals_are_summarised_once_per_interval_by_reason_and_no_body_is_logged(
    start_proxy: StartProxy, attempts: Attempts, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    scheduled: list[tuple[float, Callable[[], None]]] = []

    def schedule(delay: float, callback: Callable[[], None]) -> Any:
        scheduled.append((delay, callback))

    server = await start_proxy(api_key=KEY, refusals=RefusalSummary(schedule))
    request = {"model": "m", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
    stale = attempts.live()
    attempts.end(stale, "superseded")
    with caplog.at_level(logging.DEBUG):
        await http.post(attempt_url(server, attempts.live()), json=request)  # forwarded
        await http.post(f"{server.endpoint}/v1/chat/completions", json=request, headers={"x-api-key": KEY})
        for _ in range(3):
            await http.post(attempt_url(server, stale), json=request)
        await http.post(f"{server.endpoint}/v1/chat/completions", json=request)
        assert [delay for delay, _ in scheduled] == [60.0]  # one flush asked for, not one per refusal
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        scheduled[0][1]()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["LLM proxy refused 4 call(s) in the last 60s: superseded x3, unauthorized x1"]
    assert not any(SECRET_PROMPT in r.getMessage() or KEY in r.getMessage() for r in caplog.records)


async def test_refusals_not_yet_summarised_are_logged_when_the_proxy_stops(
    start_proxy: StartProxy, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_proxy(api_key=KEY, refusals=RefusalSummary(lambda delay, callback: None))  # never due
    await http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)
    with caplog.at_level(logging.WARNING):
        await server.stop()
    summaries = [r.getMessage() for r in caplog.records if r.name == "lightning_attempts.llm_proxy.stats"]
    assert summaries == ["LLM proxy refused 1 call(s) in the last 60s: unauthorized x1"]
