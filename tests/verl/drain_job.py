"""verl's real daemon (v0) under the switch, steps after steps of a heavy-tailed fleet, vLLM put to sleep after each.

    python -m tests.verl.drain_job PORT SIGNAL_DIR STEPS [plain]

``plain``: the workers call the daemon's plain ``/v1`` and post without an attempt id, as
upstream's workers do (``benchmarks.step_end`` runs it against upstream's daemon and Flask proxy).

Two stand-in vLLM servers (a thread of their own) that go on generating after a client hangs up,
as agentlightning's patched vLLM does, and whose ``sleep()`` fails while a request is open.
``WORKERS`` worker threads in this process speak the server's HTTP protocol as the shim does:
each claim makes a heavy-tailed number of calls (turns, ``CALLS`` to ``MAX_TURNS``) to its
attempt's endpoint, each generated for a Pareto-distributed time (the first claim of each
batch's first task takes ``STRAGGLER`` of the timeout per call, so that its second call is still
generated when its re-claim ends the batch), then posts its result; a claim is re-claimed at the
timeout while its calls go on, so stale attempts keep calling. Each
step is verl's trainer's: set up, wait, ``get_train_data_batch``, ``clear_data_and_server``, then
every backend's ``sleep()`` at once. Writes SIGNAL_DIR/drain.json: per step the sleeps that
failed, the requests open at the sleep, the metrics. Each result carries one triplet, so that
both daemons train on it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from ..llm_proxy.stand_in_vllm import SleptUnderRequests, StandInVllm
from .daemon_job import build_daemon, set_up
from .parts import tokenizer

WORKERS = 6
BATCH = 4
CALLS, MAX_TURNS = 2, 30
TIMEOUT = 2.0
"""verl's ``llm_timeout_seconds``: the task timeout (a claim whose calls take longer is re-claimed) and the proxy's
read timeout (a call generated for longer is closed by the proxy, and vLLM goes on: no call may take that long)."""
STRAGGLER = 0.75
PARETO_SCALE, PARETO_ALPHA, LONGEST = 0.05, 1.2, 0.8 * TIMEOUT
"""Each call's generation time: Pareto (scale 50 ms, alpha 1.2: heavy-tailed), at most ``LONGEST`` s."""
MAX_PROMPT, MAX_RESPONSE = 64, 16


def backends_in_a_thread() -> tuple[asyncio.AbstractEventLoop, list[StandInVllm]]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    started = [StandInVllm("alpha"), StandInVllm("beta")]
    for backend in started:
        backend.keeps_generating = True
        backend.generation_seconds = lambda body: float(body["messages"][0]["content"].split("s=")[1])
        asyncio.run_coroutine_threadsafe(backend.start(), loop).result(30)
    return loop, started


def generation_seconds(rng: random.Random) -> float:
    return min(PARETO_SCALE * rng.paretovariate(PARETO_ALPHA), LONGEST)


class Worker(threading.Thread):
    """A worker as the shim is one: claims, calls its attempt's endpoint, posts with its attempt id."""

    def __init__(self, server: str, index: int, stop: threading.Event, stragglers: set[str], plain: str | None) -> None:
        super().__init__(daemon=True, name=f"worker-{index}")
        self._server, self._stop, self._stragglers, self._plain = server, stop, stragglers, plain
        self._rng = random.Random(index)
        self.refused: dict[str, int] = {}

    def run(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                try:
                    self._one(http)
                except httpx.HTTPError:
                    time.sleep(0.1)

    def _one(self, http: httpx.Client) -> None:
        task = http.get(f"{self._server}/task", params={"wait": 1}).json().get("task")
        if not task:
            if self._plain is not None:
                time.sleep(0.05)  # upstream's server answers at once
            return
        rollout_id, attempt_id = task["rollout_id"], task.get("attempt_id")
        scoped = f"http://127.0.0.1:{task.get('llm_proxy_port')}/rollout/{rollout_id}/attempt/{attempt_id}/v1"
        url = f"{self._plain or scoped}/chat/completions"
        first_claim = task["input"].get("index") == 0 and rollout_id not in self._stragglers
        if first_claim:
            self._stragglers.add(rollout_id)
        # The straggler's re-claim makes one call, so that the batch ends while the straggler's call is generated.
        reclaimed = task["input"].get("index") == 0 and not first_claim
        turns = CALLS if first_claim else 1 if reclaimed else min(int(CALLS * self._rng.paretovariate(1.0)), MAX_TURNS)
        for turn in range(turns):
            seconds = STRAGGLER * TIMEOUT if first_claim else generation_seconds(self._rng)
            body = {"model": "m", "messages": [{"role": "user", "content": f"t{turn} s={seconds:.3f}"}]}
            answer = http.post(url, json=body)
            if answer.status_code != 200:  # stale, or the step ended: the agent gives up
                shaped = answer.headers.get("content-type") == "application/json"  # upstream's 503 is HTML
                code = answer.json()["error"]["code"] if shaped else str(answer.status_code)
                self.refused[code] = self.refused.get(code, 0) + 1
                break
        triplet = {"prompt": {"token_ids": [2, 3]}, "response": {"token_ids": [4, 5]}, "reward": 1.0}
        result: dict[str, Any] = {"rollout_id": rollout_id, "final_reward": 1.0, "triplets": [triplet]}
        if self._plain is None:
            result["attempt_id"] = attempt_id
        http.post(f"{self._server}/rollout", json=result)


def sleep_all(loop: asyncio.AbstractEventLoop, backends: list[StandInVllm]) -> dict[str, Any]:
    """verl's ``async_rollout_manager.sleep()`` on every backend, at once: the requests each had open."""

    async def sleep() -> dict[str, Any]:
        open_requests = {backend.name: backend.open_requests for backend in backends}
        failed = 0
        for backend in backends:
            try:
                backend.sleep()
            except SleptUnderRequests:
                failed += 1
        return {"failed": failed, "open": open_requests}

    return asyncio.run_coroutine_threadsafe(sleep(), loop).result(30)


def main(port: int, signal_dir: Path, steps: int, plain: bool) -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lightning_attempts.llm_proxy.draining").setLevel(logging.INFO)  # what each step waited for
    torch: Any = importlib.import_module("torch")
    loop, backends = backends_in_a_thread()
    tokenizer_ = tokenizer()
    daemon = build_daemon(port, tokenizer_, timeout=TIMEOUT)
    daemon.start()
    stop, stragglers = threading.Event(), set[str]()
    endpoint = f"http://127.0.0.1:{daemon.proxy_port}/v1" if plain else None
    workers = [Worker(f"http://127.0.0.1:{port}", i, stop, stragglers, endpoint) for i in range(WORKERS)]
    for worker in workers:
        worker.start()
    records: list[dict[str, Any]] = []
    addresses = tuple(backend.address for backend in backends)
    for step in range(1, steps + 1):
        set_up(daemon, step, "train", [None] * BATCH, addresses)
        daemon.run_until_all_finished(verbose=False)
        arguments: dict[str, Any] = {"max_prompt_length": MAX_PROMPT, "max_response_length": MAX_RESPONSE}
        arguments["device"] = torch.device("cpu")
        if "global_steps" in inspect.signature(daemon.get_train_data_batch).parameters:  # 0.2+
            arguments["global_steps"] = step
        started = time.monotonic()
        _, metrics = daemon.get_train_data_batch(**arguments)
        daemon.clear_data_and_server()
        waited = time.monotonic() - started
        slept = sleep_all(loop, backends)  # at once, as verl's trainer does
        records.append({"step": step, **slept, "waited": waited, "metrics": {k: float(v) for k, v in metrics.items()}})
    stop.set()
    report = {"steps": records, "refused": [worker.refused for worker in workers]}
    (signal_dir / "drain.json").write_text(json.dumps(report))
    print("drain job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["plain"])
