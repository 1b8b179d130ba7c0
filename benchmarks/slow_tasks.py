"""What a slow task and a poison task cost, upstream against the switch's defaults, in the same run.

    python -m benchmarks.slow_tasks [--timeout 2] [--agent 3] [--watch 24]

The release's own runner, two workers in threads, on each server in turn: upstream's
``AgentLightningServer`` with upstream's client, and ``AttemptAwareServer`` with the switch's
defaults (what verl's daemon builds under ``LIGHTNING_ATTEMPTS_INSTALL=1``) with the shim and
with upstream's client (old workers). Two scenarios:

- slow: one task whose agent needs ``--agent`` seconds every time, more than the task timeout;
- poison: one task whose agent never returns (the worker stays alive), beside an ordinary one.

For each: when the task's first result was stored (seconds after it was queued), how many
results were stored for it, how many claims it took, and what the stored result is. Nothing
is asserted: the guide quotes the table (``tests/workers/test_slow_and_poison.py`` tests it).
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


if __name__ == "__main__":
    main()
