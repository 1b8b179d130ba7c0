"""The load generator, in a process of its own: aiohttp claim+submit loops and /task latency probes.

    python -m benchmarks.load cycles ENDPOINT --loops 32 --seconds 10
    python -m benchmarks.load latency ENDPOINT --requests 300
    python -m benchmarks.load fleet ENDPOINT --client {upstream,patched} --workers 32 --idle 60
    python -m benchmarks.load parked ENDPOINT --client {upstream,patched} --workers 1000 --seconds 10

Prints one JSON object. (httpx's async client spends several times aiohttp's CPU per
request: a load generator built on it measures itself.)

``fleet`` and ``parked`` run idle workers that poll ``GET /task`` exactly as the real
clients do: upstream's sleeps ``poll_interval`` after every empty answer; ours asks the
server to hold each poll (``?wait=``) and, when the server says it did, polls again once
what is left of ``min(poll_interval, wait)`` has passed (see ``AttemptAwareClient``).
Each worker starts at a random point of its first poll interval, as a fleet started at
different times would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import aiohttp

WAIT_HEADER = "X-Lightning-Attempts-Wait"  # lightning_attempts.models.WAIT_HEADER, without importing the package


async def cycles(endpoint: str, loops: int, seconds: float) -> dict[str, Any]:
    """``loops`` concurrent claim+submit loops for ``seconds``; count completed cycles."""
    done = 0
    failed = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=loops)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop() -> None:
            nonlocal done, failed
            while time.perf_counter() < deadline:
                async with session.get(f"{endpoint}/task") as response:
                    body = await response.json()
                task = body.get("task")
                if not task:
                    failed += 1
                    continue
                rollout = {"rollout_id": task["rollout_id"], "attempt_id": task.get("attempt_id"), "final_reward": 1.0}
                async with session.post(f"{endpoint}/rollout", json=rollout) as response:
                    if (await response.json()).get("status") == "ok":
                        done += 1
                    else:
                        failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(loops)))
        elapsed = time.perf_counter() - started
    return {"cycles": done, "failed": failed, "seconds": elapsed, "cycles_per_second": done / elapsed}


async def latency(endpoint: str, requests: int) -> dict[str, Any]:
    """Sequential ``GET /task`` on an otherwise idle server: p50 and p99 in milliseconds."""
    samples: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            started = time.perf_counter()
            async with session.get(f"{endpoint}/task") as response:
                await response.read()
            samples.append((time.perf_counter() - started) * 1000)
    quantiles = statistics.quantiles(samples, n=100)
    return {"p50_ms": statistics.median(samples), "p99_ms": quantiles[98], "requests": requests}


class Worker:
    """One idle worker's poll loop, as the ``upstream`` or the ``patched`` (ours) client runs it."""

    def __init__(
        self, session: aiohttp.ClientSession, endpoint: str, client: str, poll_interval: float, wait: float
    ) -> None:
        self.session, self.client, self.poll_interval, self.wait = session, client, poll_interval, wait
        self.url = f"{endpoint}/task"
        self.sent: list[float] = []
        """perf_counter() of each poll sent."""
        self.received: float | None = None
        """time.time() when a task arrived."""

    async def run(self) -> None:
        await asyncio.sleep(random.uniform(0, self.poll_interval))
        long_poll = self.client == "patched"
        params = {"wait": str(self.wait)} if long_poll else None
        timeout = aiohttp.ClientTimeout(total=10 + (self.wait if long_poll else 0))
        while True:
            started = time.perf_counter()
            self.sent.append(started)
            held = 0.0
            body: dict[str, Any] = {}
            try:
                async with self.session.get(self.url, params=params, timeout=timeout) as response:
                    body = await response.json()
                    held = float(response.headers.get(WAIT_HEADER, "0"))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if body.get("task"):
                self.received = time.time()
                return
            pause = self.poll_interval
            if held > 0:
                pause = max(min(self.poll_interval, held) - (time.perf_counter() - started), 0.0)
            await asyncio.sleep(pause)


def _workers(
    session: aiohttp.ClientSession, endpoint: str, count: int, client: str, interval: float, wait: float
) -> list[Worker]:
    return [Worker(session, endpoint, client, interval, wait) for _ in range(count)]


async def fleet(
    endpoint: str, client: str, workers: int, idle: float, tasks: int, poll_interval: float, wait: float
) -> dict[str, Any]:
    """An idle fleet for ``idle`` seconds, then a batch of ``tasks`` queued at once: when each reaches a worker."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        fleet = _workers(session, endpoint, workers, client, poll_interval, wait)
        running = [asyncio.create_task(worker.run()) for worker in fleet]
        started = time.perf_counter()
        await asyncio.sleep(idle)
        idle_requests = sum(1 for worker in fleet for sent in worker.sent if sent - started < idle)
        async with session.post(f"{endpoint}/bench/queue", params={"n": str(tasks)}) as response:
            queued_at = (await response.json())["at"]
        await asyncio.wait_for(
            _until(lambda: sum(worker.received is not None for worker in fleet) >= tasks), 60 + poll_interval
        )
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    latencies = sorted((worker.received - queued_at) * 1000 for worker in fleet if worker.received is not None)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "workers": workers,
        "tasks": tasks,
        "idle_seconds": idle,
        "requests_per_idle_worker_minute": idle_requests / workers / (idle / 60),
        "p50_ms": statistics.median(latencies),
        "p99_ms": quantiles[98],
        "max_ms": latencies[-1],
    }


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


async def parked(endpoint: str, client: str, workers: int, seconds: float, wait: float) -> dict[str, Any]:
    """``workers`` idle workers with nothing to do: the server's CPU per second meanwhile."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        fleet = _workers(session, endpoint, workers, client, 5.0, wait)
        running = [asyncio.create_task(worker.run()) for worker in fleet]
        await _until(lambda: all(worker.sent for worker in fleet))
        await asyncio.sleep(1.0)  # the last polls are parked (or answered)
        async with session.get(f"{endpoint}/bench/usage", params={"collect": "false"}) as response:
            before = await response.json()
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        async with session.get(f"{endpoint}/bench/usage", params={"collect": "false"}) as response:
            after = await response.json()
        elapsed = time.perf_counter() - started
        requests = sum(1 for worker in fleet for sent in worker.sent if sent >= started)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    return {
        "workers": workers,
        "seconds": elapsed,
        "server_cpu_ms_per_s": (after["cpu"] - before["cpu"]) / elapsed * 1000,
        "requests_per_s": requests / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["cycles", "latency", "fleet", "parked"])
    parser.add_argument("endpoint")
    parser.add_argument("--loops", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--client", choices=["upstream", "patched"], default="upstream")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--wait", type=float, default=20.0)
    options = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket per idle worker
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if options.mode == "cycles":
        result = asyncio.run(cycles(options.endpoint, options.loops, options.seconds))
    elif options.mode == "latency":
        result = asyncio.run(latency(options.endpoint, options.requests))
    elif options.mode == "fleet":
        result = asyncio.run(
            fleet(
                options.endpoint,
                options.client,
                options.workers,
                options.idle,
                options.tasks,
                options.poll_interval,
                options.wait,
            )
        )
    else:
        result = asyncio.run(parked(options.endpoint, options.client, options.workers, options.seconds, options.wait))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
