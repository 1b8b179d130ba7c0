"""Failed attempts retried (``retry_failed``) and claims given back (``/release``), with the real runner.

The installed release's own runner posts its default empty rollout after the agent raises,
and posts nothing when it cannot fetch a task's resources; these tests drive it unmodified.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentlightning import LitAgent

from lightning_attempts import AttemptAwareClient, AttemptAwareServer
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from .. import prewarmed
from ..paths import SCRIPTS
from ..upstream import RESOURCES, make_runner, run_until_stopped, stop_fleet

Served = ServerThread[AttemptAwareServer]
TASKS, WORKERS = 6, 2
FAIL_FIRST = {1, 4}
SCRIPT = SCRIPTS / "shim_worker.py"


@contextmanager
def serve(clock: ManualClock, **options: Any) -> Generator[Served]:
    server = AttemptAwareServer(port=0, task_timeout_seconds=600, clock=clock, **options)
    with serve_in_thread(server) as running:
        running.call(server.update_resources(RESOURCES))
        yield running


def outcomes(served: Served, rid: str) -> list[str]:
    return [entry["outcome"] for entry in served.server.attempt_history(rid) or []]


class FailingAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Raises on the first claim of the ``FAIL_FIRST`` tasks, and on every claim of ``{"always": True}`` ones."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.stopped: set[int] = set()

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        if task.get("stop"):
            self.stopped.add(threading.get_ident())
            return 0.0
        with self._lock:
            self.calls[rollout_id] += 1
            call = self.calls[rollout_id]
        if task.get("always") or (task["i"] in FAIL_FIRST and call == 1):
            raise RuntimeError(f"agent failed on task {task['i']}")
        return 1.0

    async def training_rollout_async(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        return self.training_rollout(task, rollout_id, resources)


def run_batch(served: Served, samples: list[dict[str, Any]], use_async: bool) -> dict[str, Any]:
    """Queue ``samples``, run WORKERS upstream runners with the shim until every task's result is stored."""
    agent = FailingAgent()
    rids = [served.call(served.server.queue_task(sample, mode="train")) for sample in samples]

    def work(worker_id: int) -> None:
        runner = make_runner(agent, AttemptAwareClient(served.endpoint, poll_interval=0.02), worker_id)
        run_until_stopped(agent, runner, use_async)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    stored: dict[str, Any] = {}
    try:
        for rid in rids:
            rollout = served.call(served.server.poll_completed_rollout(rid, timeout=30))
            assert rollout is not None, f"{rid} never completed"
            stored[rid] = rollout
    finally:
        stop_fleet(served, threads)
    assert not any(thread.is_alive() for thread in threads)
    return {"rids": rids, "stored": stored, "stats": served.server.attempt_stats()}


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_retry_failed_stores_real_results_where_upstream_stores_empty_ones(clock: ManualClock, use_async: bool) -> None:
    samples = [{"i": i} for i in range(TASKS)]
    with serve(clock) as served:  # the default: upstream's behaviour
        default = run_batch(served, samples, use_async)
        rids, stored = default["rids"], default["stored"]
        assert [stored[rid].final_reward for rid in rids] == [None if i in FAIL_FIRST else 1.0 for i in range(TASKS)]
        assert all(outcomes(served, rid) == ["completed"] for rid in rids)
        assert default["stats"]["failure_retries"] == 0
    with serve(clock, retry_failed=2) as served:
        retried = run_batch(served, samples, use_async)
        rids, stored = retried["rids"], retried["stored"]
        assert [stored[rid].final_reward for rid in rids] == [1.0] * TASKS  # every stored rollout is real
        for i, rid in enumerate(rids):
            assert outcomes(served, rid) == (["failed", "completed"] if i in FAIL_FIRST else ["completed"])
            assert "lightning_attempts" not in stored[rid].metadata
        stats = retried["stats"]
        assert (stats["failed_attempts"], stats["failure_retries"], stats["failed_stored"]) == (2, 2, 0)
        assert stats["accepted"] == TASKS + WORKERS  # the stop tasks too


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_task_that_always_fails_completes_after_n_plus_one_claims(clock: ManualClock, use_async: bool) -> None:
    retries = 2
    with serve(clock, retry_failed=retries) as served:
        result = run_batch(served, [{"i": 0}, {"i": 2, "always": True}, {"i": 3}], use_async)
        hopeless = result["rids"][1]
        rollout = result["stored"][hopeless]
        assert rollout.final_reward is None
        assert rollout.metadata["lightning_attempts"] == {"outcome": "failed", "claims": retries + 1}
        assert outcomes(served, hopeless) == ["failed"] * (retries + 1)
        stats = result["stats"]
        assert (stats["failed_attempts"], stats["failure_retries"], stats["failed_stored"]) == (3, 2, 1)
        assert [result["stored"][rid].final_reward for rid in (result["rids"][0], result["rids"][2])] == [1.0, 1.0]


class SkippingClient(AttemptAwareClient):
    """Fails its first resources fetch (as a worker whose network blips would): the runner skips that task."""

    failed_once = False

    def get_latest_resources(self) -> Any:
        if not self.failed_once:
            self.failed_once = True
            return None
        return super().get_latest_resources()

    async def get_latest_resources_async(self) -> Any:
        if not self.failed_once:
            self.failed_once = True
            return None
        return await super().get_latest_resources_async()


class GatedAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Rewards 1.0; on a ``{"gated": True}`` task, says it started and waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.proceed = threading.Event(), threading.Event()
        self.ran: list[str] = []

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        self.ran.append(rollout_id)
        if task.get("gated"):
            self.started.set()
            assert self.proceed.wait(30)
        return 1.0

    async def training_rollout_async(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        return await asyncio.to_thread(self.training_rollout, task, rollout_id, resources)


def run_times(runner: Any, times: int, use_async: bool) -> None:
    """``runner.run()`` ``times`` times from one thread (or one asyncio task)."""
    if use_async:

        async def loop() -> None:
            for _ in range(times):
                await runner.run_async()

        asyncio.run(loop())
    else:
        for _ in range(times):
            runner.run()


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_task_whose_resources_a_runner_could_not_fetch_is_done_by_another_within_seconds(
    clock: ManualClock, use_async: bool
) -> None:
    """The clock never moves: only the release can hand the skipped task to another worker (timeout 600 s)."""
    with serve(clock) as served:
        skipped = served.call(served.server.queue_task({"n": "skipped"}, mode="train"))
        gated = served.call(served.server.queue_task({"gated": True}, mode="train"))
        a_agent, b_agent = GatedAgent(), GatedAgent()
        a_client = SkippingClient(served.endpoint, poll_interval=0.02)
        b_client = AttemptAwareClient(served.endpoint, poll_interval=0.02)
        # A skips the first task, then polls again (releasing it) and runs the gated one.
        a = threading.Thread(target=run_times, args=(make_runner(a_agent, a_client, 0), 2, use_async), daemon=True)
        b = threading.Thread(target=run_times, args=(make_runner(b_agent, b_client, 1), 1, use_async), daemon=True)
        a.start()
        try:
            assert a_agent.started.wait(30), "worker A never got to the second task"
            assert outcomes(served, skipped) == ["released"]
            started = time.monotonic()
            b.start()
            rollout = served.call(served.server.poll_completed_rollout(skipped, timeout=30))
            elapsed = time.monotonic() - started
        finally:
            a_agent.proceed.set()
            a.join(30)
            b.join(30)
        assert rollout is not None and rollout.final_reward == 1.0
        assert elapsed < 10
        assert b_agent.ran == [skipped] and a_agent.ran == [gated]
        history = served.server.attempt_history(skipped) or []
        assert [e["outcome"] for e in history] == ["released", "completed"]
        assert getattr(rollout, "attempt_id", None) == history[1]["attempt_id"]
        assert served.call(served.server.poll_completed_rollout(gated, timeout=30)) is not None
        stats = served.server.attempt_stats()
        assert (stats["releases"], stats["requeues"]) == (1, 0)
        a_client.close()
        b_client.close()


def test_a_worker_process_interrupted_mid_rollout_gives_its_claims_back(clock: ManualClock, tmp_path: Path) -> None:
    """SIGINT: the runner's claim is released instead of posting its empty result; a spare claim at exit."""
    with serve(clock) as served:
        spare = served.call(served.server.queue_task({"n": "spare"}, mode="train"))
        rid = served.call(served.server.queue_task({"n": "interrupted"}, mode="train"))
        started = tmp_path / "started"
        worker = prewarmed.popen(
            [sys.executable, str(SCRIPT), served.endpoint, str(started), "--spare-claim"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 120  # importing agentlightning 0.2+ takes seconds
            while not started.exists():  # the worker writes it from inside the rollout
                assert worker.poll() is None, worker.communicate()[0]
                assert time.monotonic() < deadline, "the worker never started its rollout"
                time.sleep(0.02)
            worker.send_signal(signal.SIGINT)
            output = worker.communicate(timeout=60)[0]
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        assert "KeyboardInterrupt" in output, output
        [interrupted] = served.server.attempt_history(rid) or []
        assert interrupted["outcome"] == "released", output  # the clock never moved: no timeout did this
        assert outcomes(served, spare) == ["released"], output  # at exit
        stats = served.server.attempt_stats()
        assert (stats["releases"], stats["accepted"], stats["dropped_total"]) == (2, 0, 0)  # nothing posted
        late = httpx.post(
            f"{served.endpoint}/rollout",
            json={"rollout_id": rid, "attempt_id": interrupted["attempt_id"], "final_reward": 0.0},
        )
        assert (late.status_code, late.json()["reason"]) == (409, "released")

        agent = GatedAgent()
        client = AttemptAwareClient(served.endpoint, poll_interval=0.02)
        runner = make_runner(agent, client, 1)
        assert runner.run() and runner.run()
        client.close()
        for done in (spare, rid):
            rollout = served.call(served.server.poll_completed_rollout(done, timeout=30))
            assert rollout is not None and rollout.final_reward == 1.0
            assert outcomes(served, done) == ["released", "completed"]


def test_a_cancelled_async_rollout_gives_its_claim_back(clock: ManualClock) -> None:
    """The async runner cancelled mid-rollout (asyncio.run's answer to Ctrl+C): released, not posted empty."""
    with serve(clock) as served:
        rid = served.call(served.server.queue_task({"gated": True}, mode="train"))
        agent = GatedAgent()
        client = AttemptAwareClient(served.endpoint, poll_interval=0.02)
        runner = make_runner(agent, client, 0)

        async def interrupted() -> None:
            rollout = asyncio.ensure_future(runner.run_async())
            assert await asyncio.to_thread(agent.started.wait, 30)
            rollout.cancel()
            with pytest.raises(asyncio.CancelledError):
                await rollout
            agent.proceed.set()  # the agent's thread, which asyncio.run waits for

        try:
            asyncio.run(interrupted())
        finally:
            agent.proceed.set()
        assert outcomes(served, rid) == ["released"]
        stats = served.server.attempt_stats()
        assert (stats["releases"], stats["accepted"]) == (1, 0)
        assert client.open_claims() == []


def test_a_released_attempts_late_result_is_dropped_under_either_policy(clock: ManualClock) -> None:
    for policy in ("reject", "salvage"):
        with serve(clock, stale_policy=policy) as served:
            rid = served.call(served.server.queue_task({"n": 1}, mode="train"))
            with httpx.Client(base_url=served.endpoint) as http:
                task = http.get("/task").json()["task"]
                assert http.post("/release", json={"rollout_id": rid, "attempt_id": task["attempt_id"]}).is_success
                late = http.post("/rollout", json={"rollout_id": rid, "attempt_id": task["attempt_id"]})
                assert (late.status_code, late.json()["reason"]) == (409, "released"), policy
                again = http.get("/task").json()["task"]
                assert (again["rollout_id"], again["claim_sequence_id"]) == (rid, 2)
