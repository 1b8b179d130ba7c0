"""Fixtures: two stand-in vLLM servers, a liveness table the test sets, and proxies served on loopback.

Everything runs on the test's event loop, as the daemon runs the proxy on its task server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import pytest

from lightning_attempts.llm_proxy import LlmProxy, ProxyServer, serve_proxy

from .stand_in_vllm import StandInVllm

StartProxy = Callable[..., Awaitable[ProxyServer]]

CHAT = {"model": "stand-in", "messages": [{"role": "user", "content": "hi"}]}


class Attempts:
    """The liveness the proxy asks: attempts made ``live`` are, until ``end``-ed; others are unknown."""

    def __init__(self) -> None:
        self.reasons: dict[tuple[str, str], str | None] = {}
        self.asked: list[tuple[str, str]] = []
        self.on_threads: set[int] = set()
        self.in_loops: set[int] = set()

    def live(self, rollout_id: str = "rollout-1") -> tuple[str, str]:
        attempt = (rollout_id, str(uuid.uuid4()))
        self.reasons[attempt] = None
        return attempt

    def end(self, attempt: tuple[str, str], reason: str) -> None:
        self.reasons[attempt] = reason

    def __call__(self, rollout_id: str, attempt_id: str) -> str | None:
        self.asked.append((rollout_id, attempt_id))
        self.on_threads.add(threading.get_ident())
        self.in_loops.add(id(asyncio.get_running_loop()))
        return self.reasons.get((rollout_id, attempt_id), "unknown_attempt")


def attempt_url(server: ProxyServer, attempt: tuple[str, str], path: str = "chat/completions") -> str:
    return f"{server.endpoint}/rollout/{attempt[0]}/attempt/{attempt[1]}/v1/{path}"


@contextlib.asynccontextmanager
async def stand_ins(*names: str) -> AsyncGenerator[list[StandInVllm]]:
    """Stand-in vLLMs of these names, started, and stopped at the end."""
    started = [StandInVllm(name) for name in names]
    try:
        for backend in started:
            await backend.start()
        yield started
    finally:
        for backend in started:
            await backend.stop()


@pytest.fixture
async def backends() -> AsyncIterator[list[StandInVllm]]:
    async with stand_ins("alpha", "beta") as started:
        yield started


@pytest.fixture
def attempts() -> Attempts:
    return Attempts()


@pytest.fixture
async def start_proxy(backends: list[StandInVllm], attempts: Attempts) -> AsyncIterator[StartProxy]:
    """``await start_proxy(addresses=None, **LlmProxy options)``: a proxy on loopback, stopped after the test."""
    servers: list[ProxyServer] = []

    async def start(addresses: Sequence[str] | None = None, **options: Any) -> ProxyServer:
        chosen = [b.address for b in backends] if addresses is None else list(addresses)
        server = await serve_proxy(LlmProxy(lambda: chosen, attempts, **options))
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client
