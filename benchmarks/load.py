"""The load generator, in a process of its own: aiohttp claim+submit loops and /task latency probes.

    python -m benchmarks.load cycles ENDPOINT --loops 32 --seconds 10
    python -m benchmarks.load latency ENDPOINT --requests 300

Prints one JSON object. (httpx's async client spends several times aiohttp's CPU per
request: a load generator built on it measures itself.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["cycles", "latency"])
    parser.add_argument("endpoint")
    parser.add_argument("--loops", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=300)
    options = parser.parse_args()
    if options.mode == "cycles":
        result = asyncio.run(cycles(options.endpoint, options.loops, options.seconds))
    else:
        result = asyncio.run(latency(options.endpoint, options.requests))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
