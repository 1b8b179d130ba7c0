"""A caller with neither key nor live attempt costs a refused request: checked before reading, bounded after."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from lightning_attempts.llm_proxy import BodyBudget

from .conftest import CHAT, Attempts, StartProxy, attempt_url
from .raw_http import ask, exchange, head, read_answer, status_of
from .stand_in_vllm import StandInVllm

KEY = "proxy-key-0123456789"
LARGE = 60 * 2**20


async def test_an_unknown_attempt_is_refused_before_its_body_is_read_and_its_connection_closed(
    start_proxy: StartProxy, backends: list[StandInVllm]
) -> None:
    server = await start_proxy()
    path = "/rollout/rollout-1/attempt/made-up/v1/chat/completions"
    status, answer = await exchange(server.port, head("POST", path, LARGE) + b"x" * 1024)  # 60 MiB said, 1 KiB sent
    assert status == 409 and b"unknown_attempt" in answer
    assert b"connection: close" in answer.lower()
    assert not any(backend.received for backend in backends)


async def test_a_refused_call_with_little_body_left_keeps_its_connection_and_reads_its_answer(
    start_proxy: StartProxy, backends: list[StandInVllm]
) -> None:
    """A stale worker's usual call: the rest of its body is read and dropped, so it reads the 409, not a reset."""
    server = await start_proxy()
    path = "/rollout/rollout-1/attempt/made-up/v1/chat/completions"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(2):  # the same connection, twice
            writer.write(head("POST", path, 2**20) + b"x" * 2**20)
            await writer.drain()
            status, answer = await read_answer(reader)
            assert status == 409 and b"connection: close" not in answer.lower()
    finally:
        writer.close()
    assert not any(backend.received for backend in backends)


async def test_a_plain_call_without_the_key_is_refused_unread_and_its_connection_closed(
    start_proxy: StartProxy, backends: list[StandInVllm]
) -> None:
    server = await start_proxy(api_key=KEY)
    status, _ = await exchange(server.port, head("POST", "/v1/chat/completions", LARGE) + b"x" * 1024)
    assert status == 401
    assert not any(backend.received for backend in backends)


async def test_liveness_is_asked_again_once_the_body_is_in(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm]
) -> None:
    server = await start_proxy()
    attempt = attempts.live()
    path = attempt_url(server, attempt).removeprefix(server.endpoint)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head("POST", path, 10, "Content-Type: application/json") + b"{")
        await writer.drain()
        while len(attempts.asked) < 1:  # asked before the body: still live
            await asyncio.sleep(0.01)
        attempts.end(attempt, "superseded")
        writer.write(b'"a": 1}  ')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    assert status_of(answer) == 409 and b"superseded" in answer
    assert not any(backend.received for backend in backends)


@pytest.mark.parametrize("path", ["/v1/../sleep", "/v1/%2e%2e/sleep", "/v1/chat/%2E/x", "/v1/a/..%2Fb"])
async def test_dot_segments_are_refused_in_every_shape_of_path(
    path: str, start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm]
) -> None:
    server = await start_proxy()
    rollout, attempt_id = attempts.live()
    for shaped in (path, f"/rollout/{rollout}/attempt/{attempt_id}{path}"):
        status, answer = await ask(server.port, head("POST", shaped, 2) + b"{}")
        assert status == 400 and b"dot_segments" in answer, shaped
    assert not any(backend.received for backend in backends)
    assert server.proxy.stats()["refused_by_reason"] == {"dot_segments": 2}


async def test_a_declared_body_past_the_budget_is_refused_with_retry_after_unread(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(body_budget=BodyBudget(1000))
    path = attempt_url(server, attempts.live()).removeprefix(server.endpoint)
    status, answer = await ask(server.port, head("POST", path, 1001) + b"x" * 10)
    assert status == 503 and b"body_budget" in answer and b"retry-after: 1" in answer.lower()
    assert not any(backend.received for backend in backends)
    ok = await http.post(attempt_url(server, attempts.live()), json=CHAT)  # the budget was given back
    assert ok.status_code == 200
    assert server.proxy.stats()["body_bytes_held"] == 0


async def test_bodies_held_at_once_share_the_budget(
    start_proxy: StartProxy, attempts: Attempts, http: httpx.AsyncClient
) -> None:
    server = await start_proxy(body_budget=BodyBudget(1000))
    path = attempt_url(server, attempts.live()).removeprefix(server.endpoint)
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head("POST", path, 600) + b"x" * 100)  # holds 600 bytes of the budget while it trickles
        await writer.drain()
        while server.proxy.body_budget.held < 600:
            await asyncio.sleep(0.01)
        refused = await http.post(attempt_url(server, attempts.live()), content=b"y" * 500)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    finally:
        writer.close()
    while server.proxy.body_budget.held:  # the hang-up gives its share back
        await asyncio.sleep(0.01)
    assert (await http.post(attempt_url(server, attempts.live()), json=CHAT)).status_code == 200


async def test_a_chunked_body_is_counted_as_it_comes(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm]
) -> None:
    server = await start_proxy(body_budget=BodyBudget(1000))
    path = attempt_url(server, attempts.live()).removeprefix(server.endpoint)
    chunks = b"".join(b"64\r\n" + b"z" * 100 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"  # no Content-Length
    status, answer = await exchange(server.port, head("POST", path, None, "Transfer-Encoding: chunked") + chunks)
    assert status == 503 and b"body_budget" in answer
    assert not any(backend.received for backend in backends)
    assert server.proxy.body_budget.held == 0


async def test_a_body_that_trickles_in_is_timed_out(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm]
) -> None:
    server = await start_proxy(body_timeout_seconds=0.2)
    path = attempt_url(server, attempts.live()).removeprefix(server.endpoint)
    status, answer = await exchange(server.port, head("POST", path, 100) + b"x", seconds=10)
    assert status == 408 and b"body_timeout" in answer
    assert not any(backend.received for backend in backends)
    assert server.proxy.body_budget.held == 0


async def test_a_client_leaving_mid_upload_is_neither_forwarded_nor_counted(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm]
) -> None:
    server = await start_proxy()
    path = attempt_url(server, attempts.live()).removeprefix(server.endpoint)
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head("POST", path, 1000) + b'{"model": "x"')
    await writer.drain()
    while server.proxy.body_budget.held < 1000:
        await asyncio.sleep(0.01)
    writer.close()
    while not server.proxy.stats()["client_disconnected"]:
        await asyncio.sleep(0.01)
    stats = server.proxy.stats()
    assert (stats["forwarded"], stats["body_bytes_held"]) == (0, 0)
    assert not any(backend.received for backend in backends)
