"""Streamed answers pass through as they arrive; a client that hangs up leaves its call to end on the backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from lightning_attempts.llm_proxy.draining import InFlight

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


async def test_a_client_hanging_up_mid_stream_leaves_the_stream_read_to_its_end(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    backends[0].gate = gate = asyncio.Event()
    async with http.stream("POST", f"{server.endpoint}/v1/chat/completions", json={**CHAT, "stream": True}) as answer:
        await asyncio.wait_for(answer.aiter_raw().__anext__(), FIRST_CHUNK_SECONDS)
    # Leaving the block closed the connection to the proxy. vLLM would not stop generating on a hang-up: the
    # proxy keeps reading the stream (dropping it), so that the call counts in flight until vLLM ends it.
    await until_gone(server.proxy.gate.calls)
    assert server.proxy.stats()["in_flight"] == 1 and not backends[0].hung_up.is_set()
    gate.set()
    await asyncio.wait_for(until_idle(server.proxy.gate.calls), FIRST_CHUNK_SECONDS)
    assert (server.proxy.stats()["client_disconnected"], server.proxy.stats()["in_flight"]) == (1, 0)
    assert not backends[0].hung_up.is_set()  # it sent its whole answer


async def test_a_client_hanging_up_while_waiting_for_a_whole_answer_leaves_the_answer_read_to_its_end(
    start_proxy: StartProxy, backends: list[StandInVllm]
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    backends[0].gate = gate = asyncio.Event()
    async with httpx.AsyncClient() as client:
        call = asyncio.ensure_future(client.post(f"{server.endpoint}/v1/chat/completions", json=CHAT))
        await backends[0].wait_received(1)
        call.cancel()  # the client gives up (as an agent's timeout does) and closes its connection
        await asyncio.gather(call, return_exceptions=True)
    await until_gone(server.proxy.gate.calls)
    assert server.proxy.stats()["in_flight"] == 1 and not backends[0].hung_up.is_set()
    gate.set()
    await asyncio.wait_for(until_idle(server.proxy.gate.calls), FIRST_CHUNK_SECONDS)
    assert (server.proxy.stats()["client_disconnected"], server.proxy.stats()["in_flight"]) == (1, 0)


async def until_gone(calls: Callable[[], list[InFlight]]) -> None:
    """Until the proxy noticed that the client of its one call in flight hung up."""

    async def poll() -> None:
        while not (calls() and all(entry.call.client_gone for entry in calls())):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), FIRST_CHUNK_SECONDS)


async def until_idle(calls: Callable[[], list[InFlight]]) -> None:
    while calls():
        await asyncio.sleep(0.01)
