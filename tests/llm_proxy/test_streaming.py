"""Streamed answers pass through as they arrive; a client that hangs up ends its backend call."""

from __future__ import annotations

import asyncio

import httpx

from .conftest import CHAT, Attempts, StartProxy, attempt_url
from .stand_in_vllm import StandInVllm

FIRST_CHUNK_SECONDS = 10.0
"""Bound on waiting for the first chunk: it comes at once unless the proxy holds it until the stream ends."""


async def test_the_first_chunk_reaches_the_client_before_the_backend_sends_the_last(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    for backend in backends:
        backend.gate = asyncio.Event()  # each stream waits after its first chunk, until the test has it
    async with http.stream("POST", f"{server.endpoint}/v1/chat/completions", json={**CHAT, "stream": True}) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        chunks = answer.aiter_raw()
        first = await asyncio.wait_for(chunks.__anext__(), FIRST_CHUNK_SECONDS)
        assert first.startswith(b"data: {")
        assert b'"finish_reason": "stop"' not in first  # the backend has not sent the last chunk yet
        for backend in backends:
            assert backend.gate is not None
            backend.gate.set()
        rest = b"".join([chunk async for chunk in chunks])
    events = (first + rest).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert len(events) == 5  # three token chunks, [DONE], and the trailing separator


async def test_a_stream_passes_through_byte_for_byte(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient, attempts: Attempts
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    request = {**CHAT, "stream": True, "return_token_ids": True}
    through = await http.post(attempt_url(server, attempts.live()), json=request)
    direct = await http.post(f"http://{backends[0].address}/v1/chat/completions", json=request)
    assert through.status_code == 200
    assert through.content == direct.content


async def test_a_client_hanging_up_mid_stream_ends_the_backend_call(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    backends[0].gate = asyncio.Event()
    async with http.stream("POST", f"{server.endpoint}/v1/chat/completions", json={**CHAT, "stream": True}) as answer:
        await asyncio.wait_for(answer.aiter_raw().__anext__(), FIRST_CHUNK_SECONDS)
    # Leaving the block closed the connection to the proxy: the proxy closes its own to the backend.
    await asyncio.wait_for(backends[0].hung_up.wait(), FIRST_CHUNK_SECONDS)
    assert server.proxy.stats()["client_disconnected"] == 1
    assert server.proxy.stats()["in_flight"] == 0


async def test_a_client_hanging_up_while_waiting_for_a_whole_answer_ends_the_backend_call(
    start_proxy: StartProxy, backends: list[StandInVllm]
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    backends[0].gate = asyncio.Event()
    async with httpx.AsyncClient() as client:
        call = asyncio.ensure_future(client.post(f"{server.endpoint}/v1/chat/completions", json=CHAT))
        await backends[0].wait_received(1)
        call.cancel()  # the client gives up (as an agent's timeout does) and closes its connection
        await asyncio.gather(call, return_exceptions=True)
    await asyncio.wait_for(backends[0].hung_up.wait(), FIRST_CHUNK_SECONDS)
    assert server.proxy.stats()["client_disconnected"] == 1
