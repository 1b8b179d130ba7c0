"""One backend of four hung, blackholed or failing fast: calls go elsewhere, the backend is passed over, re-admitted.

Real processes' parts: stand-in vLLMs served by uvicorn on loopback, a hung server (a socket
that accepts and never answers), a blackholed port (SYNs dropped: ``faults.BlackholedBackend``),
httpx clients. Timeouts are a fraction of a second; the circuits' cooldown runs on a manual clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from lightning_attempts.llm_proxy import Attempt, BackendRouter, LlmProxy, ProxyServer, serve_proxy
from lightning_attempts.llm_proxy.health import BackendHealth
from lightning_attempts.testing import ManualClock

from .conftest import CHAT, Attempts, StartProxy, attempt_url, stand_ins
from .faults import BlackholedBackend, HungBackend
from .stand_in_vllm import StandInVllm

CALLS = 1200
CONCURRENCY = 24
COOLDOWN = 5.0
FAST: dict[str, Any] = {"connect_timeout_seconds": 0.5, "first_byte_timeout_seconds": 2.0, "timeout_seconds": 10.0}
"""Timeouts for the tests: a connect, a probe after 1 s (bounded by 1 s), a stream's first chunk, a read. One event
loop runs the proxy, the stand-ins and the clients on a shared machine: a healthy stand-in must answer a probe."""

pytestmark = pytest.mark.timeout(120)


class Fleet:
    """Three healthy stand-ins and one faulty backend, behind one proxy whose circuits run on ``clock``."""

    def __init__(self, healthy: list[StandInVllm], faulty: str, server: ProxyServer, clock: ManualClock) -> None:
        self.healthy, self.faulty, self.server, self.clock = healthy, faulty, server, clock

    @property
    def proxy(self) -> LlmProxy:
        return self.server.proxy


@pytest.fixture
async def healthy() -> AsyncIterator[list[StandInVllm]]:
    async with stand_ins("alpha", "beta", "gamma") as started:
        yield started


async def _fleet(healthy: list[StandInVllm], faulty: str, attempts: Attempts) -> Fleet:
    clock = ManualClock()
    addresses = [faulty, *(b.address for b in healthy)]  # the faulty one first: it is taken first on ties
    router = BackendRouter(lambda: addresses, health=BackendHealth(cooldown=COOLDOWN, clock=clock))
    server = await serve_proxy(LlmProxy(lambda: addresses, attempts, router=router, **FAST))
    return Fleet(healthy, faulty, server, clock)


async def _calls(fleet: Fleet, attempts: Attempts, count: int = CALLS) -> tuple[Counter[int], float]:
    """``count`` calls, ``CONCURRENCY`` at a time: attempts of 4 calls each (every 4th attempt plain ``/v1``), every
    other call streamed. The statuses' counts and the slowest call's seconds."""
    limits = httpx.Limits(max_connections=CONCURRENCY)
    statuses: Counter[int] = Counter()
    slowest = 0.0
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def one_attempt(index: int) -> None:
            nonlocal slowest
            attempt = attempts.live()
            for turn in range(4):
                url = (
                    f"{fleet.server.endpoint}/v1/chat/completions"
                    if index % 4 == 3
                    else attempt_url(fleet.server, attempt)
                )
                started = time.perf_counter()
                try:
                    answer = await http.post(url, json={**CHAT, "stream": turn % 2 == 1})
                    statuses[answer.status_code] += 1
                except httpx.HTTPError:
                    statuses[0] += 1
                slowest = max(slowest, time.perf_counter() - started)

        queue = asyncio.Queue[int]()
        for index in range(count // 4):
            queue.put_nowait(index)

        async def worker() -> None:
            while not queue.empty():
                await one_attempt(queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses, slowest


def _check_served(fleet: Fleet, statuses: Counter[int], slowest: float) -> dict[str, Any]:
    total = sum(statuses.values())
    assert total == CALLS
    assert statuses[200] / total >= 0.999, statuses
    stats = fleet.proxy.stats()
    faulty = stats["backends"][fleet.faulty]
    assert faulty["circuit"] == "open" and faulty["opened"] == 1
    assert faulty["failures"] <= CONCURRENCY  # passed over once open: only the calls sent before count
    assert slowest < 8.0  # a call costs at most a probe or a connect timeout before it goes elsewhere
    assert stats["resent"] == faulty["failures"]
    return stats


async def _readmitted(fleet: Fleet, attempts: Attempts, caplog: pytest.LogCaptureFixture, replacement: StandInVllm):
    """The faulty backend answers again: after the cooldown, a trial call re-admits it."""
    fleet.clock.advance(COOLDOWN)
    statuses, _ = await _calls(fleet, attempts, count=40)
    assert statuses == Counter({200: 40})
    assert fleet.proxy.stats()["backends"][fleet.faulty]["circuit"] == "closed"
    assert replacement.received  # calls go there again
    warnings = [r.getMessage() for r in caplog.records if r.name.endswith("health") and r.levelno == logging.WARNING]
    assert [w.split(": ")[0] for w in warnings] == [
        f"LLM backend {fleet.faulty} passed over",
        f"LLM backend {fleet.faulty} re-admitted",
    ]


async def test_a_backend_failing_fast_is_passed_over_and_re_admitted(
    healthy: list[StandInVllm], attempts: Attempts, caplog: pytest.LogCaptureFixture
) -> None:
    failing = StandInVllm("failing")
    failing.fail_with = 503
    await failing.start()
    fleet = await _fleet(healthy, failing.address, attempts)
    try:
        with caplog.at_level(logging.INFO):
            statuses, slowest = await _calls(fleet, attempts)
            stats = _check_served(fleet, statuses, slowest)
            assert stats["backends"][failing.address]["failures"] == len(failing.received)
            failing.fail_with = None
            await _readmitted(fleet, attempts, caplog, failing)
    finally:
        await fleet.server.stop()
        await failing.stop()


async def test_a_hung_backend_is_passed_over_and_re_admitted(
    healthy: list[StandInVllm], attempts: Attempts, caplog: pytest.LogCaptureFixture
) -> None:
    hung = HungBackend()
    await hung.start()
    fleet = await _fleet(healthy, hung.address, attempts)
    replacement = StandInVllm("recovered")
    try:
        with caplog.at_level(logging.INFO):
            statuses, slowest = await _calls(fleet, attempts)
            _check_served(fleet, statuses, slowest)
            assert any("(the last: no_probe_answer)" in r.getMessage() for r in caplog.records)
            await hung.stop()
            await replacement.start(port=int(hung.address.rsplit(":", 1)[1]))  # the server came back
            await _readmitted(fleet, attempts, caplog, replacement)
    finally:
        await fleet.server.stop()
        await hung.stop()
        await replacement.stop()


async def test_a_blackholed_backend_is_passed_over_and_re_admitted(
    healthy: list[StandInVllm], attempts: Attempts, caplog: pytest.LogCaptureFixture
) -> None:
    blackholed = BlackholedBackend()
    fleet = await _fleet(healthy, blackholed.address, attempts)
    replacement = StandInVllm("recovered")
    try:
        with caplog.at_level(logging.INFO):
            statuses, slowest = await _calls(fleet, attempts)
            _check_served(fleet, statuses, slowest)
            assert any("(the last: connect_timeout)" in r.getMessage() for r in caplog.records)
            blackholed.close()
            await replacement.start(port=int(blackholed.address.rsplit(":", 1)[1]))
            await _readmitted(fleet, attempts, caplog, replacement)
    finally:
        await fleet.server.stop()
        blackholed.close()
        await replacement.stop()


async def test_a_half_streamed_answer_is_cut_never_sent_twice(
    start_proxy: StartProxy, backends: list[StandInVllm], attempts: Attempts
) -> None:
    server = await start_proxy(**FAST)
    cut, other = backends
    cut.cut_streams, cut.gate = True, asyncio.Event()
    attempt = attempts.live()
    server.proxy.router.acquire(Attempt(*attempt))  # the attempt is routed to the first backend, ``cut``
    server.proxy.router.release(cut.address)
    async with httpx.AsyncClient(timeout=30) as http:
        request = http.stream("POST", attempt_url(server, attempt), json={**CHAT, "stream": True})
        async with request as answer:
            chunks = answer.aiter_raw()
            assert (await asyncio.wait_for(chunks.__anext__(), 10)).startswith(b"data: {")  # the agent has a byte
            cut.gate.set()  # the backend breaks off
            with pytest.raises(httpx.RemoteProtocolError):  # the answer is cut short, not sent again
                async for _ in chunks:
                    pass
    assert len(cut.received) == 1 and not other.received
    stats = server.proxy.stats()
    assert (stats["resent"], stats["backends"][cut.address]["failures"]) == (0, 1)


async def test_a_stream_whose_first_chunk_does_not_come_goes_elsewhere(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(**{**FAST, "first_byte_timeout_seconds": 1.0})
    stalled, other = backends
    stalled.stall_streams = True  # its headers come at once, as vLLM's do; its first chunk never
    answer = await http.post(f"{server.endpoint}/v1/chat/completions", json={**CHAT, "stream": True})
    assert answer.status_code == 200 and answer.headers["x-backend"] == other.name
    assert answer.content.endswith(b"data: [DONE]\n\n")
    await asyncio.wait_for(stalled.hung_up.wait(), 10)  # its call was closed: vLLM stops working on it
    assert server.proxy.stats()["backends"][stalled.address]["failures"] == 1


async def test_a_whole_answer_slower_than_the_probes_is_waited_for(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(addresses=[backends[0].address], max_connections_per_backend=1, **FAST)
    backends[0].gate = asyncio.Event()  # a long generation: vLLM sends a whole answer's headers when it is done
    # The call holds the only pooled connection: the probes have their own.
    call = asyncio.ensure_future(http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT))
    await asyncio.wait_for(backends[0].wait_received(3), 10)  # the call, then two probes (each after 1 s waiting)
    backends[0].gate.set()
    assert (await call).status_code == 200
    assert [r.path for r in backends[0].received[:3]] == ["/v1/chat/completions", "/v1/models", "/v1/models"]
    assert server.proxy.stats()["backend_failures"] == 0


async def test_a_4xx_is_the_call_s_own_and_the_last_backend_s_503_is_passed_through(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(**FAST)
    for backend in backends:
        backend.fail_with = 400
    for _ in range(4):
        assert (await http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)).status_code == 400
    assert server.proxy.stats()["backend_failures"] == 0
    for backend in backends:
        backend.fail_with = 503
    answer = await http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)
    assert answer.status_code == 503 and answer.json()["error"]["message"] == "failing"  # tried both: the last's own
    stats = server.proxy.stats()
    assert (stats["resent"], stats["backend_failures"]) == (1, 2)


async def test_a_stream_broken_off_before_its_first_chunk_reached_the_agent_is_re_sent(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(**FAST)
    cut, other = backends
    cut.cut_streams = True  # the first chunk and the reset reach the proxy together: no byte went to the agent
    answer = await http.post(f"{server.endpoint}/v1/chat/completions", json={**CHAT, "stream": True})
    assert answer.status_code == 200 and answer.headers["x-backend"] == other.name
    assert (len(cut.received), len(other.received), server.proxy.stats()["resent"]) == (1, 1, 1)


async def test_with_no_other_backend_left_a_late_first_chunk_is_waited_for(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy(addresses=[backends[0].address], **{**FAST, "first_byte_timeout_seconds": 0.2})
    backends[0].stall_streams = True  # headers at once, the first chunk late: a queue on the only server
    call = asyncio.ensure_future(http.post(f"{server.endpoint}/v1/chat/completions", json={**CHAT, "stream": True}))
    await asyncio.sleep(0.6)  # three times the bound: cutting the call would leave the agent nothing
    assert not call.done()
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    assert server.proxy.stats()["in_flight"] == 1  # vLLM would go on: the proxy waits for the stream's end
    assert (await server.proxy.drain(0)).cut == 1  # the step's end cuts it, closing its connection
    await asyncio.wait_for(backends[0].hung_up.wait(), 10)
    assert server.proxy.stats()["backend_failures"] == 0
