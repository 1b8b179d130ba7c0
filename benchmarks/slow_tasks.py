"""What a slow task, a poison task and a broken worker cost, upstream against the switch's defaults, in one run.

    python -m benchmarks.slow_tasks [--timeout 2] [--agent 3] [--watch 24] [--tasks 20] [--task-seconds 0.2]

The release's own runner, two workers in threads, on each server in turn: upstream's
``AgentLightningServer`` with upstream's client, and ``AttemptAwareServer`` with the switch's
defaults (what verl's daemon builds under ``LIGHTNING_ATTEMPTS_INSTALL=1``) with the shim and
with upstream's client (old workers). Two scenarios:

- slow: one task whose agent needs ``--agent`` seconds every time, more than the task timeout;
- poison: one task whose agent never returns (the worker stays alive), beside an ordinary one.

For each: when the task's first result was stored (seconds after it was queued), how many
results were stored for it, how many claims it took, and what the stored result is.

Then a broken worker: one healthy worker (``--task-seconds`` a task) beside one whose resource
fetches fail (a bad proxy, a network error), so that its runner skips every claim, on a batch of
``--tasks``: how many tasks the healthy worker ran, how many were completed empty, and when the
batch's last result was stored. Nothing is asserted: the guide quotes the tables
(``tests/workers/test_slow_and_poison.py`` and ``test_broken_worker.py`` test them).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentlightning import LitAgent

from lightning_attempts import AGENTLIGHTNING_VERSION, AttemptAwareClient, AttemptAwareServer
from lightning_attempts.compat import AgentLightningClient, AgentLightningServer
from lightning_attempts.switch.variables import SWITCH_DEFAULTS
from lightning_attempts.testing import ServerThread, serve_in_thread
from tests.upstream import RESOURCES, make_runner


class Agent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Needs ``seconds`` for an ordinary task; a poison one until ``released``; a stop task ends the worker."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.released = threading.Event()
        self.stopped: set[int] = set()

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        if task.get("stop"):
            self.stopped.add(threading.get_ident())
            return 0.0
        if task.get("poison"):
            self.released.wait(timeout=600)
        elif task.get("slow"):
            time.sleep(self.seconds)
        return 1.0


def work(agent: Agent, client: Any, worker_id: int) -> None:
    runner = make_runner(agent, client, worker_id)
    while threading.get_ident() not in agent.stopped:
        runner.run()


def stored_count(served: ServerThread[Any], rollout_id: str, seen: list[Any]) -> int:
    """Results stored for ``rollout_id`` so far (taken from the server, so that a second one shows)."""

    async def take() -> list[Any]:
        return await served.server.retrieve_completed_rollouts()

    seen.extend(r for r in served.call(take()) if r.rollout_id == rollout_id)
    return len(seen)


def scenario(kind: str, name: str, timeout: float, agent_seconds: float, watch: float) -> dict[str, Any]:
    patched = kind != "upstream"
    server: Any = (
        AttemptAwareServer(port=0, task_timeout_seconds=timeout, **SWITCH_DEFAULTS)
        if patched
        else AgentLightningServer(host="127.0.0.1", port=free_port(), task_timeout_seconds=timeout)
    )
    client_class = AttemptAwareClient if kind == "switch, shim workers" else AgentLightningClient
    agent = Agent(agent_seconds)
    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        task = {"poison": True} if name == "poison" else {"slow": True}
        started = time.monotonic()
        rid = served.call(server.queue_task(task, mode="train"))
        if name == "poison":
            served.call(server.queue_task({"ordinary": True}, mode="train"))
        threads = [
            threading.Thread(
                target=work, args=(agent, client_class(served.endpoint, poll_interval=0.2), i), daemon=True
            )
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        seen: list[Any] = []
        first: float | None = None
        while time.monotonic() - started < watch:
            if stored_count(served, rid, seen) and first is None:
                first = time.monotonic() - started
            time.sleep(0.05)
        claims = len(served.run(lambda: server.attempt_history(rid)) or []) if patched else None
        agent.released.set()
        for _ in threads:
            served.call(server.queue_task({"stop": True}, mode="train"))
        for thread in threads:
            thread.join(timeout=60)
    stored: Any = seen[0] if seen else None
    metadata: dict[str, Any] = (stored.metadata or {}) if stored else {}
    ours: dict[str, Any] = metadata.get("lightning_attempts") or {}
    marked = ours.get("outcome")
    return {
        "first_result_s": None if first is None else round(first, 2),
        "results_stored": len(seen),
        "claims": claims,
        "stored": None if stored is None else marked or f"reward {stored.final_reward}",
    }


class Stopped(BaseException):
    """Out of a stopped worker's next request: its runner's endless poll loop ends."""


def stoppable(base: type[AgentLightningClient], *, broken: bool) -> type[Any]:
    """``base`` (a client class) whose requests stop its runner once ``stopping`` is set; ``broken``: whose resource
    fetches fail."""

    class Client(base):  # type: ignore[misc, valid-type]
        stopping = threading.Event()

        def _request_json(self, url: str) -> dict[str, Any] | None:
            if self.stopping.is_set():
                raise Stopped
            answer: dict[str, Any] | None = super()._request_json(url)
            return None if broken and "/resources" in url else answer

    Client.stopping = threading.Event()
    return Client


def broken_worker(kind: str, timeout: float, tasks: int, seconds: float) -> dict[str, Any]:
    """A batch of ``tasks``, one healthy worker and one whose runner can fetch no resources."""
    patched = kind != "upstream"
    server: Any = (
        AttemptAwareServer(port=0, task_timeout_seconds=timeout, **SWITCH_DEFAULTS)
        if patched
        else AgentLightningServer(host="127.0.0.1", port=free_port(), task_timeout_seconds=timeout)
    )
    base = AttemptAwareClient if patched else AgentLightningClient
    healthy, broken = stoppable(base, broken=False), stoppable(base, broken=True)
    agent = Agent(seconds)

    def run(client: Any, worker_id: int) -> None:
        runner = make_runner(agent, client, worker_id)
        try:
            while True:
                runner.run()
        except Stopped:
            pass

    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        started = time.monotonic()
        rids = [served.call(server.queue_task({"slow": True}, mode="train")) for _ in range(tasks)]
        threads = [
            threading.Thread(target=run, args=(cls(served.endpoint, poll_interval=0.2), i), daemon=True)
            for i, cls in enumerate((broken, healthy))
        ]
        for thread in threads:
            thread.start()
        results: dict[str, Any] = {}
        while len(results) < tasks and time.monotonic() - started < 60 * timeout:
            results.update((r.rollout_id, r) for r in served.call(server.retrieve_completed_rollouts()))
            time.sleep(0.02)
        finished = time.monotonic() - started
        healthy.stopping.set()
        broken.stopping.set()
        for thread in threads:
            thread.join(timeout=60)
    ran = sum(r.final_reward == 1.0 for r in results.values() if r.rollout_id in rids)
    return {"ran": ran, "empty": len(results) - ran, "seconds": round(finished, 2) if len(results) == tasks else None}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description="What a slow task and a poison task cost, upstream and the switch.")
    parser.add_argument("--timeout", type=float, default=2.0, help="the task timeout, seconds")
    parser.add_argument("--agent", type=float, default=3.0, help="what the slow task's agent needs, seconds")
    parser.add_argument("--watch", type=float, default=None, help="seconds to watch each run (default: 12 timeouts)")
    parser.add_argument("--tasks", type=int, default=20, help="the broken-worker batch's tasks")
    parser.add_argument("--task-seconds", type=float, default=0.2, help="what the healthy worker needs a task")
    args = parser.parse_args()
    watch = args.watch or 12 * args.timeout
    print(f"agentlightning {AGENTLIGHTNING_VERSION}; task timeout {args.timeout:g} s, slow agent {args.agent:g} s, "
          f"each run watched {watch:g} s; the switch's defaults: {dict(SWITCH_DEFAULTS)}")  # fmt: skip
    print("| scenario | server, workers | first result stored after (s) | results stored | claims | stored |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("slow", "poison"):
        for kind in ("upstream", "switch, shim workers", "switch, old workers"):
            row = scenario(kind, name, args.timeout, args.agent, watch)
            first = "never" if row["first_result_s"] is None else f"{row['first_result_s']:g}"
            claims = "not kept" if row["claims"] is None else row["claims"]
            print(f"| {name} | {kind} | {first} | {row['results_stored']} | {claims} | {row['stored']} |", flush=True)
    alone = args.tasks * args.task_seconds
    print(f"\nBroken worker: {args.tasks} tasks of {args.task_seconds:g} s, one healthy worker ({alone:g} s alone) "
          "beside one whose resource fetches fail")  # fmt: skip
    print("| server, workers | tasks run | completed empty | batch finished after (s) |")
    print("| --- | --- | --- | --- |")
    for kind in ("upstream", "switch, shim workers"):
        row = broken_worker(kind, args.timeout, args.tasks, args.task_seconds)
        finished = "never" if row["seconds"] is None else f"{row['seconds']:g}"
        print(f"| {kind} | {row['ran']} of {args.tasks} | {row['empty']} | {finished} |", flush=True)


if __name__ == "__main__":
    main()
