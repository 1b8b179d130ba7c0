"""Counters for the step's metrics: calls forwarded, refused by reason, failed upstream, and the added latency."""

from __future__ import annotations

import asyncio

import httpx

from lightning_attempts.llm_proxy import latency_between
from lightning_attempts.llm_proxy.stats import LatencyHistogram, latency_summary
from lightning_attempts.testing import ManualClock

from .conftest import CHAT, Attempts, StartProxy, attempt_url
from .stand_in_vllm import StandInVllm


async def test_stats_count_what_the_proxy_did(
    start_proxy: StartProxy, attempts: Attempts, http: httpx.AsyncClient
) -> None:
    server = await start_proxy()
    before = server.proxy.stats()
    live = attempts.live()
    for _ in range(2):
        await http.post(attempt_url(server, live), json=CHAT)
    await http.post(f"{server.endpoint}/v1/chat/completions", json=CHAT)
    await http.post(attempt_url(server, ("rollout-1", "stale")), json=CHAT)
    stats = server.proxy.stats()
    assert {key: stats[key] for key in ("forwarded", "forwarded_plain", "forwarded_attempt", "refused")} == {
        "forwarded": 3,
        "forwarded_plain": 1,
        "forwarded_attempt": 2,
        "refused": 1,
    }
    assert stats["refused_by_reason"] == {"unknown_attempt": 1}
    assert (stats["failed_upstream"], stats["in_flight"], stats["recorded_calls"]) == (0, 0, 2)
    assert stats["added_latency_count"] == 3  # refused calls are not counted: they never waited on a backend
    assert 0 < stats["added_latency_p50_ms"] <= stats["added_latency_p99_ms"] < 1000
    window = latency_between(before, stats)
    assert window["count"] == 3 and window["sum_s"] == stats["added_latency_sum_s"]


def test_p50_and_p99_are_read_from_the_histogram_within_a_bucket() -> None:
    histogram = LatencyHistogram()
    for milliseconds in [1.0] * 98 + [20.0, 500.0]:
        histogram.add(milliseconds / 1000)
    summary = latency_summary(histogram.counts, histogram.sum)
    assert summary["p50_ms"] is not None and summary["p99_ms"] is not None
    assert abs(summary["p50_ms"] - 1.0) < 0.08 and abs(summary["p99_ms"] - 20.0) < 1.6  # buckets 7.5% wide
    assert latency_summary([0] * len(histogram.counts), 0.0)["p50_ms"] is None


async def test_the_added_latency_excludes_the_wait_on_the_backend(
    start_proxy: StartProxy, backends: list[StandInVllm], http: httpx.AsyncClient
) -> None:
    clock = ManualClock()
    server = await start_proxy(addresses=[backends[0].address], clock=clock)
    for stream in (False, True):
        backends[0].gate = asyncio.Event()
        call = asyncio.ensure_future(
            http.post(f"{server.endpoint}/v1/chat/completions", json={**CHAT, "stream": stream})
        )
        await backends[0].wait_received(1 + stream)
        clock.advance(10.0)  # the backend takes 10 s (on the proxy's clock) to answer, or to go on streaming
        backends[0].gate.set()
        assert (await call).status_code == 200
    stats = server.proxy.stats()
    assert stats["added_latency_count"] == 2 and stats["added_latency_sum_s"] == 0.0
