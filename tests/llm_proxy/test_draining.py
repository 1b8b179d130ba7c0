"""The step's end: no call left in flight to a backend when the daemon lets vLLM sleep (issue 36, part 1).

The stand-ins here ``keep_generating`` after their client hangs up, as agentlightning's patched
vLLM server does, and their ``sleep()`` fails while a request is open, as vLLM's crashes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx
import pytest

from lightning_attempts.llm_proxy import ProxyServer

from .conftest import CHAT, Attempts, StartProxy, attempt_url
from .stand_in_vllm import SleptUnderRequests, StandInVllm

BOUND = 10.0
"""Bound on what a test waits for (the proxy noticing a hang-up, a call arriving): never reached when it passes."""


async def until(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds, letting the loop run (the proxy and the stand-ins share it)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), BOUND)


def held(backend: StandInVllm) -> asyncio.Event:
    backend.keeps_generating = True
    backend.gate = asyncio.Event()
    return backend.gate


async def test_a_call_whose_client_hung_up_stays_in_flight_until_the_backend_ends_it(
    start_proxy: StartProxy, backends: list[StandInVllm], attempts: Attempts
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    gate = held(backends[0])
    async with httpx.AsyncClient() as client:
        call = asyncio.ensure_future(client.post(attempt_url(server, attempts.live()), json=CHAT))
        await backends[0].wait_received(1)
        call.cancel()  # the agent gives up (its own timeout) and closes its connection
        await asyncio.gather(call, return_exceptions=True)
    calls = server.proxy.gate.calls
    await until(lambda: bool(calls()) and all(entry.call.client_gone for entry in calls()))
    # vLLM goes on generating it: the proxy keeps its backend connection and counts it in flight.
    assert server.proxy.stats()["in_flight"] == 1 and len(server.proxy.gate) == 1
    assert backends[0].open_requests == 1 and not backends[0].hung_up.is_set()
    gate.set()  # the generation ends: its answer is read and dropped
    await until(lambda: not len(server.proxy.gate))
    stats = server.proxy.stats()
    assert (stats["in_flight"], stats["client_disconnected"], stats["recorded_calls"]) == (0, 1, 0)
    backends[0].sleep()


async def test_once_the_step_ended_every_call_is_refused_and_the_drain_waits_for_those_in_flight(
    start_proxy: StartProxy, backends: list[StandInVllm], attempts: Attempts, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    gate = held(backends[0])
    straggler = attempts.live("rollout-1")
    async with httpx.AsyncClient(timeout=30) as client:
        calls = [
            asyncio.ensure_future(client.post(attempt_url(server, straggler), json=CHAT)),
            asyncio.ensure_future(client.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)),
        ]
        await backends[0].wait_received(2)
        assert server.proxy.end_step() == 2  # the batch is done: both belong to attempts no longer needed
        with pytest.raises(SleptUnderRequests):
            backends[0].sleep()  # what upstream's trainer would do now
        for url in (attempt_url(server, attempts.live("rollout-2")), f"{server.endpoint}/v1/chat/completions"):
            refused = await client.post(url, json=CHAT)
            assert refused.status_code == 409 and refused.headers["x-should-retry"] == "false"
            assert refused.json()["error"]["code"] == "step_ended"
        caplog.set_level(logging.INFO, "lightning_attempts.llm_proxy.draining")
        drain = asyncio.ensure_future(server.proxy.drain(BOUND))
        await asyncio.sleep(0)
        assert not drain.done()
        gate.set()
        drained = await drain
        assert [(await call).status_code for call in calls] == [200, 200]  # they ended on their own: not cut
    assert (drained.waited_for, drained.cut, drained.left) == (2, 0, 0)
    backends[0].sleep()  # nothing open
    assert len(backends[0].received) == 2  # the refused calls never reached it
    stats = server.proxy.stats()
    assert (stats["in_flight_at_step_end"], stats["calls_cut"], stats["refused_step_ended"]) == (2, 0, 2)
    assert stats["refused_by_reason"] == {"step_ended": 2}
    (line,) = [r for r in caplog.records if r.name.endswith("draining")]
    assert line.levelno == logging.INFO and "2 LLM call(s) in flight" in line.getMessage()
    assert "1 plain /v1 call(s)" in line.getMessage() and straggler[1] in line.getMessage()


async def test_past_the_bound_the_calls_left_are_cut_and_said_so(
    start_proxy: StartProxy, backends: list[StandInVllm], attempts: Attempts, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    backends[0].gate = asyncio.Event()  # this stand-in notices the proxy closing its connection
    straggler = attempts.live()
    async with httpx.AsyncClient(timeout=30) as client:
        call = asyncio.ensure_future(client.post(attempt_url(server, straggler), json=CHAT))
        await backends[0].wait_received(1)
        drained = await server.proxy.drain(0)  # no wait: cut at once
        answer = await call
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "step_ended"
    assert (drained.waited_for, drained.cut, drained.left) == (1, 1, 0)
    await asyncio.wait_for(backends[0].hung_up.wait(), BOUND)  # its backend connection was closed
    stats = server.proxy.stats()
    assert (stats["in_flight"], stats["calls_cut"], stats["refused_step_ended"], stats["backend_failures"]) == (
        0,
        1,
        0,
        0,
    )
    (line,) = [r for r in caplog.records if r.name.endswith("draining")]
    message = line.getMessage()
    assert line.levelno == logging.WARNING and "cut 1 LLM call(s)" in message and "may still be generating" in message
    assert straggler[1] in message and backends[0].address in message


async def test_a_stream_begun_is_cut_by_dropping_its_connection(
    start_proxy: StartProxy, backends: list[StandInVllm], attempts: Attempts
) -> None:
    server = await start_proxy(addresses=[backends[0].address])
    backends[0].gate = asyncio.Event()  # held after the first chunk
    async with httpx.AsyncClient(timeout=30) as client:
        request = {**CHAT, "stream": True}
        async with client.stream("POST", attempt_url(server, attempts.live()), json=request) as answer:
            chunks = answer.aiter_raw()
            assert (await asyncio.wait_for(chunks.__anext__(), BOUND)).startswith(b"data: {")
            drained = await server.proxy.drain(0)
            with pytest.raises(httpx.RemoteProtocolError):  # cut short: the agent cannot take it as whole
                async for _ in chunks:
                    pass
    assert drained.cut == 1 and server.proxy.stats()["in_flight"] == 0


async def test_the_next_batch_opens_the_step_again(
    start_proxy: StartProxy, backends: list[StandInVllm], attempts: Attempts, http: httpx.AsyncClient
) -> None:
    server: ProxyServer = await start_proxy()
    drained = await server.proxy.drain(BOUND)
    assert (drained.waited_for, drained.cut) == (0, 0)
    assert (await http.post(attempt_url(server, attempts.live()), json=CHAT)).status_code == 409
    server.proxy.open_step()
    assert (await http.post(attempt_url(server, attempts.live()), json=CHAT)).status_code == 200
    assert server.proxy.stats()["step_closed"] is False
