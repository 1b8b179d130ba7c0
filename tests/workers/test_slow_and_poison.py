"""A run that upstream finishes finishes here: the release's own runner, the switch's defaults, real time.

A task whose agent always needs more than the task timeout completes with its agent's real
result (upstream: with the straggler's, after a second claim); a task whose agent never returns
ends at its budget, completed empty and marked, and the rest of its batch completes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import pytest
from agentlightning import LitAgent

from lightning_attempts import AttemptAwareClient, AttemptAwareServer
from lightning_attempts.compat import AgentLightningClient
from lightning_attempts.switch.variables import SWITCH_DEFAULTS
from lightning_attempts.testing import ServerThread, serve_in_thread

from ..upstream import RESOURCES, make_runner, run_until_stopped, stop_fleet

Served = ServerThread[AttemptAwareServer]


class SlowAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Needs ``seconds`` for every task; a ``{"poison": True}`` one never returns (until ``released``)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.released = threading.Event()
        self.stopped: set[int] = set()
        self.claims = 0

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        if task.get("stop"):
            self.stopped.add(threading.get_ident())
            return 0.0
        self.claims += 1
        if task.get("poison"):
            self.released.wait(timeout=120)  # an endless tool loop, until the test ends
            return 1.0
        time.sleep(self.seconds)  # the agent's real work, longer than the task timeout every time
        return 1.0


@contextmanager
def serving(task_timeout: float) -> Generator[Served]:
    """A server with the switch's defaults (leases, task budget, max claims), as verl's daemon builds it."""
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=task_timeout, **SWITCH_DEFAULTS)) as served:
        served.call(served.server.update_resources(RESOURCES))
        yield served


def start_fleet(served: Served, agent: SlowAgent, client_class: type, workers: int = 2) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=run_until_stopped,
            args=(agent, make_runner(agent, client_class(served.endpoint, poll_interval=0.05), i), False),
            daemon=True,
        )
        for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.timeout(60)
@pytest.mark.parametrize("client_class", [AttemptAwareClient, AgentLightningClient], ids=["shim", "old"])
def test_a_task_that_always_needs_more_than_the_timeout_completes_with_its_real_result(client_class: type) -> None:
    """Timeout 1 s, agent 1.5 s (the issue's 2 s and 3 s, halved): upstream stores the straggler's result."""
    agent = SlowAgent(seconds=1.5)
    with serving(task_timeout=1.0) as served:
        started = time.monotonic()
        rid = served.call(served.server.queue_task({"slow": True}, mode="train"))
        threads = start_fleet(served, agent, client_class)
        try:
            (stored,) = served.call(served.server.wait_for_rollouts([rid], timeout=30), timeout=40)
            elapsed = time.monotonic() - started
        finally:
            stop_fleet(served, threads)
        assert stored.final_reward == 1.0 and (stored.metadata or {}).get("lightning_attempts") is None
        assert elapsed < 3.0  # one agent run, give or take; never re-claimed for ever
        history = served.run(lambda: served.server.attempt_history(rid)) or []
        if client_class is AttemptAwareClient:  # its heartbeating worker kept the claim: one run, no GPU twice
            assert [entry["outcome"] for entry in history] == ["completed"]
            assert served.run(served.server.attempt_stats)["requeues"] == 0
        else:  # an old worker's claim ends at the timeout; its late result is taken while the re-claim is live
            assert len(history) >= 2 and served.run(served.server.attempt_stats)["accepted_unverified_reclaimed"] == 1


@pytest.mark.timeout(60)
def test_a_task_whose_agent_never_returns_ends_at_its_budget_and_its_batch_completes() -> None:
    timeout = 0.5  # the budget: 8 task timeouts, 4 s
    agent = SlowAgent(seconds=0.0)
    with serving(task_timeout=timeout) as served:
        started = time.monotonic()
        poison = served.call(served.server.queue_task({"poison": True}, mode="train"))
        fine = served.call(served.server.queue_task({"fine": True}, mode="train"))
        threads = start_fleet(served, agent, AttemptAwareClient)
        try:
            rollouts = served.call(served.server.wait_for_rollouts([poison, fine], timeout=30), timeout=40)
            elapsed = time.monotonic() - started
        finally:
            agent.released.set()
            stop_fleet(served, threads)
        by_id = {rollout.rollout_id: rollout for rollout in rollouts}
        assert by_id[fine].final_reward == 1.0
        assert by_id[poison].final_reward is None and not by_id[poison].triplets
        marked = (by_id[poison].metadata or {})["lightning_attempts"]
        assert marked == {"outcome": "task_budget_exceeded", "claims": 1}
        assert SWITCH_DEFAULTS["task_budget"] * timeout <= elapsed < SWITCH_DEFAULTS["task_budget"] * timeout + 2.0
        stats = served.run(served.server.attempt_stats)
        assert (stats["given_up"], stats["task_budget_exceeded"], stats["requeues"]) == (1, 1, 0)
        # The released worker's late result was dropped: the task had its (empty) result already.
        assert served.run(served.server.attempt_stats)["dropped"]["already_completed"] == 1
