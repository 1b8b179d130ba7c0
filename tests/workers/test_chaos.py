"""A seeded chaos run over real HTTP: a verl-like controller, dozens of misbehaving workers.

Reproduce a run with LIGHTNING_ATTEMPTS_CHAOS_SEED=<the seed it prints>.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from lightning_attempts import AttemptAwareClient, AttemptAwareServer, AttemptRollout
from lightning_attempts.testing import ServerThread, serve_in_thread

TIMEOUT = 0.3
BATCHES, BATCH_SIZE = 4, 12
KINDS = ["shim"] * 10 + ["old"] * 6 + ["crasher"] * 3 + ["double"] * 3 + ["forger"] * 3 + ["cutter"] * 2 + ["junk"] * 2
Served = ServerThread[AttemptAwareServer]


@pytest.fixture
def seed() -> int:
    seed = int(os.environ.get("LIGHTNING_ATTEMPTS_CHAOS_SEED", random.randrange(2**32)))
    print(f"chaos seed: {seed} (rerun with LIGHTNING_ATTEMPTS_CHAOS_SEED={seed})")
    return seed


@pytest.fixture
def served() -> Iterator[Served]:
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=TIMEOUT)) as running:
        yield running


@dataclass
class Ledger:
    """What the workers did, to check the server against."""

    shim_submissions: Counter[str] = field(default_factory=Counter[str])
    actions: Counter[str] = field(default_factory=Counter[str])


async def worker(kind: str, endpoint: str, rng: random.Random, stop: asyncio.Event, ledger: Ledger) -> None:
    client = AttemptAwareClient(endpoint, poll_interval=0.01, timeout=5, submit_attempts=3)
    async with httpx.AsyncClient(base_url=endpoint, timeout=5) as http:
        while not stop.is_set():
            if kind in ("cutter", "junk"):
                await (cut_connection(endpoint) if kind == "cutter" else post_junk(http, rng))
                ledger.actions[kind] += 1
                await asyncio.sleep(rng.uniform(0.01, 0.05))
                continue
            answer = (await http.get("/task")).json()
            if not answer["is_available"]:
                await asyncio.sleep(0.01)
                continue
            task = answer["task"]
            rid, attempt = task["rollout_id"], task["attempt_id"]
            # A share of the rollouts outlast the timeout.
            await asyncio.sleep(rng.choice([0.0, 0.02, 0.05, TIMEOUT * 1.5, TIMEOUT * 2.5]))
            ledger.actions[kind] += 1
            if kind == "crasher":
                continue  # claimed, then died
            if kind == "old":
                await http.post("/rollout", json={"rollout_id": rid, "final_reward": 0.5})
            elif kind == "forger":
                await http.post("/rollout", json={"rollout_id": rid, "attempt_id": f"forged-{rng.random()}"})
            else:  # shim, double: the shim carries the claim's attempt id
                rollout = AttemptRollout(rollout_id=rid, attempt_id=attempt, final_reward=1.0)
                for _ in range(2 if kind == "double" else 1):
                    await client.post_rollout_async(rollout)
                    ledger.shim_submissions[rid] += 1
    await client.aclose()


async def cut_connection(endpoint: str) -> None:
    """Send half a POST /rollout and hang up."""
    host, port = endpoint.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps({"rollout_id": "rollout-x", "attempt_id": "a", "final_reward": 1.0}).encode()
    head = (
        f"POST /rollout HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[: len(body) // 2])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    del reader


async def post_junk(http: httpx.AsyncClient, rng: random.Random) -> None:
    junk: list[dict[str, Any]] = [
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"json": {"attempt_id": "a"}},
        {"json": {"rollout_id": 7, "final_reward": "high"}},
        {"json": {"rollout_id": "r", "attempt_id": "a" * 100_000}},
    ]
    response = await http.post("/rollout", **rng.choice(junk))
    assert response.status_code == 422


async def controller(served: Served, ledger: Ledger) -> dict[str, Any]:
    """verl's loop: queue a batch, collect until completed == queued, train, repeat; then drain."""
    server = served.server
    earlier: set[str] = set()
    problems: Counter[str] = Counter()
    stored: dict[str, Any] = {}

    async def on_server(coroutine: Any) -> Any:
        return await asyncio.wrap_future(served.submit(coroutine))

    for index in range(BATCHES):
        queued = {await on_server(server.queue_task({"batch": index, "i": i})) for i in range(BATCH_SIZE)}
        completed: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while len(completed) < len(queued):
            assert time.monotonic() < deadline, f"batch {index} stalled at {len(completed)}/{len(queued)}"
            for rollout in await on_server(server.retrieve_completed_rollouts()):
                rid = rollout.rollout_id
                problems["duplicate"] += rid in completed or rid in stored
                problems["from another batch"] += rid in earlier
                completed[rid] = rollout
            await asyncio.sleep(0.02)
        assert set(completed) == queued
        stored.update(completed)
        earlier |= queued
        await asyncio.sleep(0.05)  # the training step
    return {"stored": stored, "problems": problems}


def test_chaos(served: Served, seed: int) -> None:
    rng = random.Random(seed)
    ledger = Ledger()

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(worker(kind, served.endpoint, random.Random(rng.random()), stop, ledger))
            for kind in KINDS
        ]
        try:
            result = await controller(served, ledger)
            # Drain: whatever still arrives after the last batch is a late result.
            await asyncio.sleep(TIMEOUT * 3)
            result["late"] = len(await asyncio.wrap_future(served.submit(served.server.retrieve_completed_rollouts())))
        finally:
            stop.set()
            await asyncio.gather(*workers)
        return result

    started = time.monotonic()
    result = asyncio.run(run())
    stats = served.server.attempt_stats()
    print(f"chaos: {time.monotonic() - started:.1f}s, {dict(ledger.actions)}, stats {stats}")
    assert result["problems"] == Counter({"duplicate": 0, "from another batch": 0})
    assert result["late"] == 0
    assert len(result["stored"]) == BATCHES * BATCH_SIZE
    # No stale result stored for an attempt-aware worker: each stored attempt is the task's last claim.
    for rid, rollout in result["stored"].items():
        history = served.server.attempt_history(rid) or []
        if rollout.attempt_id is not None:
            assert rollout.attempt_id == history[-1]["attempt_id"], (rid, history)
            assert history[-1]["outcome"] == "completed"
    assert stats["requeues"] >= 1 and stats["dropped"]["unknown_attempt"] >= 1  # the chaos did happen
    assert stats["duplicates"] + stats["dropped"]["already_completed"] >= 1
    assert ledger.actions["cutter"] >= 1 and ledger.actions["junk"] >= 1
