"""``serve_proxy`` serves on the running loop, refuses a port in use at once, and stops cleanly."""

from __future__ import annotations

import socket
import statistics
import time

import httpx
import pytest

from lightning_attempts.llm_proxy import LlmProxy, ProxyServer, serve_proxy
from lightning_attempts.server.lifecycle import ServerStartError

from .conftest import CHAT, Attempts, StartProxy
from .stand_in_vllm import StandInVllm


async def test_it_serves_on_a_free_port_and_stops(attempts: Attempts, backends: list[StandInVllm]) -> None:
    server = await serve_proxy(LlmProxy(lambda: [backends[0].address], attempts), "127.0.0.1", 0)
    assert server.port > 0 and server.endpoint == f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)).status_code == 200
    await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"{server.endpoint}/v1/models")


async def test_a_port_in_use_raises_at_once(attempts: Attempts) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = ProxyServer(LlmProxy(lambda: [], attempts), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(ServerStartError, match="in use"):
            await server.start()


async def test_calls_on_one_connection_are_not_held_back_by_nagles_algorithm(
    start_proxy: StartProxy, backends: list[StandInVllm]
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    seconds: list[float] = []
    async with httpx.AsyncClient() as client:  # one kept-alive connection, as an agent's client keeps it
        for call in range(23):
            started = time.perf_counter()
            await client.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)
            if call >= 3:
                seconds.append(time.perf_counter() - started)
    # Without TCP_NODELAY the body, written after the headers, waits for the client's delayed ACK: 40 ms a call.
    assert statistics.median(seconds) < 0.02
