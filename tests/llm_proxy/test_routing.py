"""One attempt's calls stay on one backend; new attempts and plain calls go where the fewest calls are in flight."""

from __future__ import annotations

import asyncio

import httpx

from lightning_attempts.llm_proxy import Attempt, BackendRouter
from lightning_attempts.llm_proxy.health import BackendHealth, Circuit
from lightning_attempts.testing import ManualClock

from .conftest import CHAT, Attempts, StartProxy, attempt_url
from .stand_in_vllm import StandInVllm

WAIT_SECONDS = 10.0
"""Bound on waiting for calls to reach a backend: they do at once, unless routed elsewhere."""


async def test_all_calls_of_an_attempt_go_to_one_backend(
    start_proxy: StartProxy, attempts: Attempts, http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    first, second = attempts.live(), attempts.live()
    seen = {
        attempt: await _backends_answering(http, attempt_url(server, attempt), calls=6) for attempt in (first, second)
    }
    assert len(seen[first]) == len(seen[second]) == 1
    assert seen[first] != seen[second]  # the second attempt began while both backends were idle: taken in turn


async def test_a_new_attempt_goes_to_the_backend_with_the_fewest_calls_in_flight(
    start_proxy: StartProxy, attempts: Attempts, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    gate = asyncio.Event()
    for backend in backends:
        backend.gate = gate
    busy = attempts.live()
    held = [asyncio.ensure_future(http.post(attempt_url(server, busy), json=CHAT)) for _ in range(3)]
    loaded = await asyncio.wait_for(_first_to_receive(backends), WAIT_SECONDS)
    await asyncio.wait_for(loaded.wait_received(3), WAIT_SECONDS)  # all three on the busy attempt's backend
    fresh = [asyncio.ensure_future(http.post(attempt_url(server, attempts.live()), json=CHAT)) for _ in range(2)]
    plain = asyncio.ensure_future(http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT))
    idle = next(backend for backend in backends if backend is not loaded)
    await asyncio.wait_for(idle.wait_received(2), WAIT_SECONDS)  # both new attempts: 0, then 1 in flight, against 3
    await asyncio.wait_for(idle.wait_received(3), WAIT_SECONDS)  # and the plain call (2 against 3)
    gate.set()
    answers = await asyncio.gather(*held, *fresh, plain)
    assert [a.headers["x-backend"] for a in answers] == [loaded.name] * 3 + [idle.name] * 3


async def test_a_forgotten_attempt_is_routed_afresh(
    start_proxy: StartProxy, attempts: Attempts, http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    attempt = attempts.live()
    await http.post(attempt_url(server, attempt), json=CHAT)
    assert server.proxy.router.backend_of(Attempt(*attempt)) is not None
    server.proxy.forget(*attempt)
    assert server.proxy.router.backend_of(Attempt(*attempt)) is None
    assert server.proxy.stats()["routed_attempts"] == 0


def test_routes_are_bounded_the_least_recently_used_forgotten_first() -> None:
    router = BackendRouter(lambda: ["a:1", "b:1"], max_routes=2)
    one, two, three = (Attempt("r", str(i)) for i in range(3))
    for attempt in (one, two):
        router.release(router.acquire(attempt) or "")
    router.release(router.acquire(one) or "")  # one is now the most recently used
    router.release(router.acquire(three) or "")
    assert (router.routes(), router.evicted_routes) == (2, 1)
    assert router.backend_of(two) is None and router.backend_of(one) is not None


def test_an_attempt_whose_backend_left_the_list_moves_to_another() -> None:
    backends = ["a:1", "b:1"]
    router = BackendRouter(lambda: backends)
    attempt = Attempt("r", "1")
    first = router.acquire(attempt)
    assert first is not None
    router.release(first)
    backends.remove(first)  # verl's addresses changed between steps
    assert router.acquire(attempt) == backends[0]


def test_a_backend_whose_circuit_is_open_is_passed_over_until_a_trial_call_re_admits_it() -> None:
    clock = ManualClock()
    router = BackendRouter(lambda: ["a:1", "b:1"], health=BackendHealth(failures_to_open=1, cooldown=5.0, clock=clock))
    router.health.failed("a:1", "connect_error")
    picks = {router.acquire(None) for _ in range(4)}  # never released: a:1 would have the fewest in flight
    assert picks == {"b:1"}
    clock.advance(5.0)
    assert router.acquire(None) == "a:1"  # the trial call
    assert router.acquire(None) == "b:1"  # one trial at a time
    router.health.succeeded("a:1")
    assert router.health.circuit("a:1") is Circuit.CLOSED


def test_an_attempt_moves_off_a_backend_whose_circuit_opened() -> None:
    router = BackendRouter(lambda: ["a:1", "b:1"], health=BackendHealth(failures_to_open=1, clock=ManualClock()))
    attempt = Attempt("r", "1")
    first = router.acquire(attempt)
    assert first is not None
    router.release(first)
    router.health.failed(first, "status_503")
    second = router.acquire(attempt)
    assert second is not None and second != first
    assert router.backend_of(attempt) == second


def test_when_every_backend_is_open_the_calls_still_go_somewhere() -> None:
    router = BackendRouter(lambda: ["a:1"], health=BackendHealth(failures_to_open=1, clock=ManualClock()))
    router.health.failed("a:1", "connect_error")
    assert router.acquire(None) == "a:1"
    assert router.acquire(None, exclude=["a:1"]) is None  # a re-sent call never goes back where it failed


async def _first_to_receive(backends: list[StandInVllm]) -> StandInVllm:
    waits = {asyncio.ensure_future(backend.wait_received(1)): backend for backend in backends}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    return waits[next(iter(done))]


async def _backends_answering(http: httpx.AsyncClient, url: str, *, calls: int) -> set[str]:
    """The backends that answered `calls` calls made one after another (a helper: Python 3.10 has no nested await)."""
    return {(await http.post(url, json=CHAT)).headers["x-backend"] for _ in range(calls)}
