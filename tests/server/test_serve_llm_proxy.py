"""``lightning-attempts serve --llm-backend``: the attempt-aware LLM proxy beside a served server, end to end.

A real ``serve`` process with a key, in front of a stand-in vLLM running in the test's event loop;
the test is the trainer (``RemoteServer``: resources naming the proxy, a task) and a shim worker
(``AttemptAwareClient``) that claims the task and calls the endpoint its resources name for the attempt.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from agentlightning.types import LLM

from lightning_attempts import AttemptAwareClient, AttemptAwareServer
from lightning_attempts.client import RemoteServer
from lightning_attempts.llm_proxy.standalone import StandaloneProxy

from .. import prewarmed
from ..llm_proxy.conftest import CHAT
from ..llm_proxy.stand_in_vllm import StandInVllm, response_ids

KEY = "serve-llm-proxy-key-7"


@dataclass
class Served:
    server: str
    """The server's endpoint."""
    proxy: str
    """The LLM proxy's endpoint (``http://host:port``)."""
    lines: list[str]
    """What serve wrote on stderr."""


async def metrics(http: httpx.AsyncClient, server: str) -> dict[str, float]:
    """``/metrics``' ``lightning_attempts_llm_proxy_*`` samples without labels, by name."""
    text = (await http.get(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"})).text
    found = re.findall(r"^(lightning_attempts_llm_proxy_\w+) (\S+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


@pytest.fixture
async def backend() -> AsyncIterator[StandInVllm]:
    stand_in = StandInVllm("vllm-0")
    await stand_in.start()
    try:
        yield stand_in
    finally:
        await stand_in.stop()


@pytest.fixture
async def served(backend: StandInVllm) -> AsyncIterator[Served]:
    """``serve --port 0 --llm-backend <the stand-in> --llm-proxy-port 0`` with a key; Ctrl+C at the end, obeyed."""
    command = [sys.executable, "-m", "lightning_attempts", "serve", "--port", "0", "--log-level", "warning"]
    command += ["--llm-backend", f"http://{backend.address}/v1", "--llm-proxy-port", "0"]
    process = prewarmed.popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "AGL_KEY": KEY})
    lines: list[str] = []
    proxied = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "LLM proxy on" in line:
                proxied.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert await asyncio.to_thread(proxied.wait, 120), "".join(lines)
        server = re.search(r"serving on (http://\S+) ", "".join(lines))
        proxy = re.search(r"LLM proxy on (http://\S+)/v1 in front of (\S+) ", "".join(lines))
        assert server and proxy, "".join(lines)
        assert proxy.group(2) == backend.address  # the URL given, as the address it calls
        yield Served(server.group(1), proxy.group(1), lines)
        process.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(process.wait, 30) == 0
        reader.join(timeout=30)
        assert "Traceback" not in "".join(lines), "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


@pytest.mark.timeout(180)
async def test_a_shim_worker_calls_its_attempts_endpoint_on_serves_proxy(
    served: Served, backend: StandInVllm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGL_KEY", KEY)  # what the trainer's and the worker's clients send
    worker = AttemptAwareClient(served.server, poll_interval=0.05)
    async with RemoteServer(served.server) as trainer, httpx.AsyncClient(timeout=30) as http:
        resources_id = await trainer.update_resources({"main_llm": LLM(endpoint=served.proxy + "/v1", model="m")})
        rollout_id = await trainer.queue_task({"question": "2 + 2"}, mode="train", resources_id=resources_id)

        task = await worker.poll_next_task_async()
        assert task is not None and task.rollout_id == rollout_id
        assert task.llm_proxy_port == int(served.proxy.rsplit(":", 1)[1])  # the task names the bound port
        resources = await worker.get_resources_by_id_async(resources_id)
        assert resources is not None
        llm = resources.resources["main_llm"]
        assert isinstance(llm, LLM)
        endpoint = llm.endpoint
        assert endpoint == f"{served.proxy}/rollout/{rollout_id}/attempt/{task.attempt_id}/v1"

        answered = await http.post(endpoint + "/chat/completions", json=CHAT)  # no key: the attempt is the capability
        assert answered.status_code == 200, answered.text
        assert answered.json()["response_token_ids"] == [response_ids("vllm-0")]
        assert "authorization" not in backend.received[-1].headers  # the proxy sends vLLM no key of ours
        seen = await metrics(http, served.server)
        assert seen["lightning_attempts_llm_proxy_forwarded_attempt_total"] == 1
        assert seen["lightning_attempts_llm_proxy_recorded_attempts"] == 1  # its token ids, while its task is live
        keyed_headers = {"x-api-key": KEY}
        spans = (await http.get(f"{served.server}/v1/agl/spans?rollout_id={rollout_id}", headers=keyed_headers)).json()
        assert [span["attributes"]["response_tokens"] for span in spans["items"]] == [len(response_ids("vllm-0"))]

        plain = served.proxy + "/v1/chat/completions"
        refused = await http.post(plain, json=CHAT)
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
        keyed = await http.post(plain, json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
        assert keyed.status_code == 200, keyed.text

        assert await trainer.cancel_pending([rollout_id]) == [rollout_id]  # the attempt is stale from here
        stale = await http.post(endpoint + "/chat/completions", json=CHAT)
        assert (stale.status_code, stale.json()["error"]["code"]) == (409, "cancelled")
        assert stale.headers["x-should-retry"] == "false"
        assert len(backend.received) == 2  # the refused call never reached the backend

        seen = await metrics(http, served.server)
        assert seen["lightning_attempts_llm_proxy_forwarded_total"] == 2
        assert seen["lightning_attempts_llm_proxy_refused_not_live_total"] == 1
        assert seen["lightning_attempts_llm_proxy_recorded_attempts"] == 0  # forgotten as its task finished
        assert seen["lightning_attempts_llm_proxy_routed_attempts"] == 0
        summary = (await http.get(served.server + "/dashboard/summary", headers=keyed_headers)).json()
        assert summary["proxy"]["forwarded"] == 2  # the dashboard's proxy panel
    await worker.aclose()


@pytest.mark.timeout(60)
async def test_serves_proxy_keeps_no_record_of_a_finished_task(backend: StandInVllm) -> None:
    server = AttemptAwareServer(host="127.0.0.1", port=0)
    proxy = StandaloneProxy(server, [backend.address], 0, 30.0, host="127.0.0.1")
    await proxy.start()
    await server.start()
    worker = AttemptAwareClient(server.endpoint)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            rollout_id = await server.queue_task({"question": "2 + 2"}, mode="train")
            task = await worker.poll_next_task_async()
            assert task is not None and task.llm_proxy_port == proxy.port
            endpoint = f"http://127.0.0.1:{proxy.port}/rollout/{rollout_id}/attempt/{task.attempt_id}/v1"
            assert (await http.post(endpoint + "/chat/completions", json=CHAT)).status_code == 200
            assert proxy.stats()["recorded_calls"] == 1

            backend.gate = asyncio.Event()  # the next call is in flight when its task finishes
            in_flight = asyncio.ensure_future(http.post(endpoint + "/chat/completions", json=CHAT))
            await backend.wait_received(2)
            assert await server.cancel_pending() == [rollout_id]
            assert (proxy.stats()["recorded_attempts"], proxy.stats()["routed_attempts"]) == (0, 0)
            backend.gate.set()
            assert (await in_flight).status_code == 200  # a call already forwarded is not taken back
            assert (proxy.stats()["recorded_calls"], proxy.records.ended_not_live) == (0, 1)  # nor kept after
    finally:
        await worker.aclose()
        await server.stop()
    assert server.llm_proxy_port is None  # the proxy stopped with the server
