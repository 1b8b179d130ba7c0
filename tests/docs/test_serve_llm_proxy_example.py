"""README's ``serve --llm-backend`` example as written: its serve command, ``asker_workers.py``, ``asker_producer.py``.

The serve command is README's with its two addresses swapped for this machine's: a free port for 9999 (its
proxy then serves on the next one, by default, as README's on 10000) and a stand-in vLLM, run in the test's
event loop, for ``127.0.0.1:8000``. The scripts are written out unchanged and run as processes, as in
README's terminals; Ctrl+C ends the workers and the server.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from ..llm_proxy.stand_in_vllm import StandInVllm
from ..paths import README
from .blocks import blocks
from .test_producer_example import group, scripts

KEY = "asker-run-1"
EXPECTED = ["What is 2 + 2? reward 1.0", "Name a prime. reward 1.0", "Say hello. reward 1.0"]

# README's example is written for 0.3.0; 100 s of processes, about neither the release nor the Python: once a run.
pytestmark = [pytest.mark.only_release("0.3.0"), pytest.mark.once]


def serve_command() -> list[str]:
    """README's serve command with the proxy, as its words (the comment left out)."""
    found = [b.code for b in blocks(README.read_text(), "bash") if "serve --port 9999 --llm-backend" in b.code]
    assert len(found) == 1, found
    assert f"export AGL_KEY={KEY}\n" in found[0]
    line = next(line for line in found[0].splitlines() if "--llm-backend" in line)
    return shlex.split(line, comments=True)


def pair_of_free_ports() -> int:
    """A port free, with the next one free too (serve's and, by default, its proxy's)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two free ports in a row")


def test_readme_names_the_scripts_its_shell_block_runs() -> None:
    assert serve_command() == [
        ".venv/bin/lightning-attempts", "serve", "--port", "9999", "--llm-backend", "127.0.0.1:8000"
    ]  # fmt: skip
    assert {"asker_workers.py", "asker_producer.py"} <= set(scripts())
    text = README.read_text()
    assert ".venv/bin/python asker_workers.py" in text and ".venv/bin/python asker_producer.py" in text
    assert 'LLM_PROXY = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:10000/v1"' in text


async def stop(process: asyncio.subprocess.Process, timeout: float) -> int:
    """Ctrl+C to ``process``'s group; its exit status (killed, and failed, if it outlives ``timeout``)."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise


@pytest.mark.timeout(300)
async def test_the_readme_asker_gets_answers_through_its_attempts_endpoints(tmp_path: Path) -> None:
    for name, code in scripts().items():
        (tmp_path / name).write_text(code)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTNING_ATTEMPTS_")} | {"AGL_KEY": KEY}
    port = pair_of_free_ports()
    vllm = StandInVllm("vllm")
    await vllm.start()
    words = [sys.executable, "-m", "lightning_attempts", *serve_command()[1:], "--log-level", "warning"]
    words[words.index("9999")] = str(port)
    words[words.index("127.0.0.1:8000")] = vllm.address
    serve = await asyncio.create_subprocess_exec(
        *words, env=environment, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    workers: asyncio.subprocess.Process | None = None
    try:
        assert serve.stderr is not None
        said = ""
        while "LLM proxy on" not in said:
            line = (await asyncio.wait_for(serve.stderr.readline(), 120)).decode()
            assert line, said
            said += line
        server, proxy = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}/v1"
        assert f"serving on {server}" in said and f"LLM proxy on {proxy} in front of {vllm.address}" in said
        workers = await asyncio.create_subprocess_exec(
            sys.executable,
            "asker_workers.py",
            server,
            cwd=tmp_path,
            env=environment,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a group of its own, as a terminal's, which Ctrl+C reaches as a whole
        )
        producer = await asyncio.create_subprocess_exec(
            sys.executable,
            "asker_producer.py",
            server,
            proxy,
            cwd=tmp_path,
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(producer.communicate(), 240)
        assert producer.returncode == 0, err.decode()[-3000:]
        assert out.decode().splitlines() == EXPECTED
        assert len(vllm.received) == len(EXPECTED)  # one call per task, through the proxy
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as http:
            metrics = (await http.get(f"{server}/metrics")).text
        assert re.search(r"^lightning_attempts_llm_proxy_forwarded_attempt_total 3\.0$", metrics, re.MULTILINE)
        assert await stop(workers, 60) is not None  # agentlightning's trainer ends its forked workers, then itself
        await asyncio.to_thread(psutil.wait_procs, group(workers.pid), 30)
        assert group(workers.pid) == [], "a worker outlived Ctrl+C"
        assert await stop(serve, 30) == 0
    finally:
        for process in (serve, workers):
            if process is not None:
                for child in group(process.pid):
                    child.kill()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        await vllm.stop()
