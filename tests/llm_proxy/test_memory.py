"""100 key-less callers sending large bodies to made-up attempts: the proxy's process grows by under 10 MB.

The proxy runs in a process of its own (``proxy_process``); its RSS is sampled while the
callers send. Each says 60 MiB and sends up to ``SENT`` bytes: the proxy answers 409 from the
headers and closes the connection, reading none of it (a caller whose connection was reset
meanwhile may not read the 409: the proxy's refusal summary, logged at stop, counts them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys

import psutil
import pytest

from ..paths import ROOT
from .raw_http import head, status_of

CALLERS = 100
SENT = 2 * 2**20
CHUNK = 64 * 2**10
GOAL_BYTES = 10 * 2**20


async def _caller(port: int, number: int) -> int:
    """One caller: its status (0 if its connection was reset before the answer could be read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    path = f"/rollout/rollout-{number}/attempt/made-up-{number}/v1/chat/completions"
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    try:
        writer.write(head("POST", path, 60 * 2**20))
        for _ in range(SENT // CHUNK):
            writer.write(b"x" * CHUNK)
            await writer.drain()
    except OSError:
        pass  # the proxy closed the connection, as it should
    try:
        return status_of(await asyncio.wait_for(answer, 10))
    except (OSError, TimeoutError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return 0
    finally:
        answer.cancel()
        writer.close()


async def _peak_rss(process: psutil.Process, done: asyncio.Event) -> int:
    peak = 0
    while not done.is_set():
        peak = max(peak, process.memory_info().rss)
        await asyncio.sleep(0.005)
    return peak


@pytest.mark.once  # 15 s of CPU, about neither the release nor the Python
@pytest.mark.timeout(120)
async def test_key_less_callers_sending_large_bodies_cost_the_proxy_under_10_mb() -> None:
    command = [sys.executable, "-m", "tests.llm_proxy.proxy_process"]
    pipe = subprocess.PIPE
    with subprocess.Popen(command, cwd=ROOT, text=True, stdin=pipe, stdout=pipe, stderr=pipe) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            port = int(child.stdout.readline())
            process = psutil.Process(child.pid)
            await _caller(port, -1)  # warm: the code paths of a refusal have run once
            baseline = process.memory_info().rss
            done = asyncio.Event()
            sampler = asyncio.ensure_future(_peak_rss(process, done))
            statuses = await asyncio.gather(*(_caller(port, n) for n in range(CALLERS)))
            done.set()
            grown = await sampler - baseline
            assert grown < GOAL_BYTES, f"the proxy grew by {grown / 2**20:.1f} MB"
            assert set(statuses) <= {409, 0}, statuses
            child.stdin.close()
            assert child.stderr is not None
            logged = child.stderr.read()
            assert f"unknown_attempt x{CALLERS + 1}" in logged, logged
        finally:
            with contextlib.suppress(OSError):
                child.stdin.close() if child.stdin is not None else None
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
