"""What ``serve`` is for: a trainer elsewhere drives it over HTTP while the release's own runners work for it.

A real ``lightning-attempts serve`` process with a key; the test is the trainer (``RemoteServer``);
three threads run the installed release's runner on ``AttemptAwareClient``, which find their
tasks and resources on the server only because the trainer put them there over HTTP.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agentlightning import LitAgent
from agentlightning.types import PromptTemplate

from lightning_attempts import AttemptAwareClient
from lightning_attempts.client import RemoteServer
from lightning_attempts.errors import Unauthorized

from .. import prewarmed
from ..upstream import make_runner, run_until_stopped

KEY = "serve-producer-key-42"
WORKERS, TASKS = 3, 8


class Greeter(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Rewards the length of its prompt, which it can only build from the resources the trainer published."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: set[int] = set()

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        if task.get("stop"):
            self.stopped.add(threading.get_ident())
            return 0.0
        return float(len(resources["prompt"].template.format(**task)))


@pytest.fixture
def serve() -> Iterator[str]:
    """``lightning-attempts serve`` with a key, until the test ends: its endpoint. It must stop on Ctrl+C, cleanly."""
    command = [sys.executable, "-m", "lightning_attempts", "serve", "--port", "0", "--log-level", "warning"]
    environment = {**os.environ, "AGL_KEY": KEY}
    process = prewarmed.popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if match := re.search(r"serving on (http://\S+) .*API key required", line):
                break
        else:
            pytest.fail("serve never said where it serves:\n" + "".join(lines))
        reader = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
        reader.start()  # nothing blocks on a full pipe
        yield match.group(1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        reader.join(timeout=30)
        assert "Traceback" not in "".join(lines), "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


async def test_a_trainer_drives_serve_over_http_while_runners_work(serve: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_KEY", KEY)  # what the workers' clients and the trainer's send
    agent = Greeter()
    clients = [AttemptAwareClient(serve, poll_interval=0.05) for _ in range(WORKERS)]
    threads = [
        threading.Thread(target=run_until_stopped, args=(agent, make_runner(agent, client, i), False), daemon=True)
        for i, client in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    names = [f"worker-{i}" for i in range(TASKS)]
    try:
        async with RemoteServer(serve) as trainer:
            resources_id = await trainer.update_resources(
                {"prompt": PromptTemplate(template="Say hi to {name}.", engine="f-string")}
            )
            rollout_ids = await trainer.queue_tasks(
                [{"name": name} for name in names], mode="train", resources_id=resources_id
            )
            rollouts = await trainer.wait_for_rollouts(rollout_ids, timeout=60)
            assert [r.rollout_id for r in rollouts] == rollout_ids  # every one, once, in the order queued
            assert [r.final_reward for r in rollouts] == [float(len(f"Say hi to {name}.")) for name in names]
            with httpx.Client(base_url=serve, headers={"Authorization": f"Bearer {KEY}"}) as http:
                for rollout in rollouts:  # each result is its last attempt's, as the shim posted it
                    history = http.get(f"/attempts/{rollout.rollout_id}").json()
                    assert (history[-1]["outcome"], history[-1]["attempt_id"]) == ("completed", rollout.attempt_id)
            assert sorted(r.rollout_id for r in await trainer.retrieve_completed_rollouts()) == sorted(rollout_ids)
            with pytest.raises(Unauthorized):
                await RemoteServer(serve, api_key="").queue_task({"name": "intruder"})
            stats = await trainer.attempt_stats()
            assert (stats["claims"], stats["unauthorized"], stats["queued"]) == (TASKS, 1, 0)
    finally:  # one stop task per worker, whatever happened
        await RemoteServer(serve).queue_tasks([{"stop": True}] * WORKERS, mode="train")
        for thread in threads:
            thread.join(timeout=30)
        for client in clients:
            client.close()
    assert not any(thread.is_alive() for thread in threads)
