"""A fleet that can no longer progress is not silent: tasks wait, none is in flight, no worker asks for one.

The issue's scenario: one worker, a poison task given up at its budget while the worker's runner is still inside
the agent; the next tasks wait for ever (upstream's server waits the same way, silently). The server says so in
one WARNING per stall, repeated every ``REPEAT_SECONDS``, and in ``/attempts/stats`` and ``/metrics``. The watch
runs on a real-time tick and reads the server's clock, here a manual one: each test checks when it has moved it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agentlightning import LitAgent

from lightning_attempts import AttemptAwareClient, AttemptAwareServer
from lightning_attempts.compat import AgentLightningClient
from lightning_attempts.server.fleet import REPEAT_SECONDS, STALL_SECONDS
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from ..upstream import RESOURCES, make_runner, run_until_stopped, stop_fleet

T, BUDGET = 10.0, 8.0
Served = ServerThread[AttemptAwareServer]


class PoisonAgent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """A ``{"poison": True}`` task never returns (until ``released``); a ``{"stop": True}`` one ends its worker."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.stopped: set[int] = set()
        self.poisoned = threading.Event()

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        if task.get("stop"):
            self.stopped.add(threading.get_ident())
        elif task.get("poison"):
            self.poisoned.set()
            self.released.wait(timeout=120)  # a hung sandbox, until the test ends
        return 1.0


@pytest.fixture
def served(clock: ManualClock) -> Iterator[Served]:
    """The switch's liveness options (a task budget, max claims), leases that never lapse on the manual clock."""
    server = AttemptAwareServer(
        port=0, task_timeout_seconds=T, unresponsive_seconds=1000.0, task_budget=BUDGET, max_claims=8, clock=clock
    )
    with serve_in_thread(server) as running:
        running.call(server.update_resources(RESOURCES))
        yield running


def check(served: Served) -> None:
    """Run the fleet watch's check now, on the server's loop (its tick would, up to 5 s later)."""
    fleet = served.server.fleet
    assert fleet is not None
    served.run(fleet.check)


def stalls(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "lightning_attempts.server" and r.getMessage().startswith("Stalled")]


@pytest.mark.timeout(90)
def test_a_worker_stuck_in_a_given_up_poison_task_stalls_the_next_tasks_and_the_server_says_so(
    served: Served, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    server, agent = served.server, PoisonAgent()
    caplog.set_level(logging.INFO, logger="lightning_attempts.server")
    worker = make_runner(agent, AttemptAwareClient(served.endpoint, poll_interval=0.05), worker_id=0)
    threads = [threading.Thread(target=run_until_stopped, args=(agent, worker, False), daemon=True)]
    threads[0].start()
    try:
        poison = served.call(server.queue_task({"poison": True}, mode="train"))
        assert agent.poisoned.wait(timeout=30)
        clock.advance(BUDGET * T + 1)
        served.run(server.store.requeue_expired)  # given up at its budget: its worker is still in the agent
        assert served.run(server.attempt_stats)["given_up"] == 1
        batch = [served.call(server.queue_task({"n": i}, mode="train")) for i in range(2)]
        check(served)  # the tasks are seen waiting, nothing in flight, no worker asking
        clock.advance(STALL_SECONDS - 1)
        check(served)
        assert stalls(caplog) == []
        clock.advance(1)
        check(served)
        check(served)  # one WARNING per stall
        (said,) = stalls(caplog)
        assert said.levelno == logging.WARNING
        message = said.getMessage()
        assert message.startswith(
            f"Stalled: 2 task(s) queued, none in flight, and no worker has asked for a task for {STALL_SECONDS:.0f}s"
        )
        assert "1 claim(s) ended by the server under workers that never came back" in message
        assert f"given up at task_budget or max_claims; the latest {poison}" in message
        assert "upstream's would wait here silently" in message
        with httpx.Client(base_url=served.endpoint) as http:
            stats = http.get("/attempts/stats").json()
            lines = set(http.get("/metrics").text.splitlines())
        assert (stats["queued"], stats["claims_in_flight"]) == (2, 0)
        assert (stats["stall_episodes"], stats["stall_ongoing_seconds"], stats["stall_stranded_attempts"]) == (
            1,
            STALL_SECONDS,
            1,
        )
        assert "lightning_attempts_stall_episodes_total 1.0" in lines
        assert f"lightning_attempts_stall_ongoing_seconds {STALL_SECONDS}" in lines
        assert "lightning_attempts_stall_stranded_attempts 1.0" in lines
        clock.advance(REPEAT_SECONDS - 1)
        check(served)
        assert len(stalls(caplog)) == 1
        clock.advance(1)
        check(served)
        assert len(stalls(caplog)) == 2  # repeated at the interval while it lasts
        agent.released.set()  # the agent returns at last: its result is dropped, and the worker asks again
        rollouts = served.call(server.wait_for_rollouts(batch, timeout=30), timeout=40)
        assert [r.final_reward for r in rollouts] == [1.0, 1.0]
        check(served)
    finally:
        agent.released.set()
        stop_fleet(served, threads)
    assert len(stalls(caplog)) == 2
    over = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Stall over")]
    assert over == [f"Stall over after {STALL_SECONDS + REPEAT_SECONDS:.0f}s: a worker asked for a task."]
    stats = served.run(server.attempt_stats)
    assert (stats["stall_episodes"], stats["stall_ongoing_seconds"], stats["stall_stranded_attempts"]) == (1, 0, 0)
    assert stats["stall_seconds"] == STALL_SECONDS + REPEAT_SECONDS
    assert stats["dropped"]["already_completed"] == 1


@pytest.mark.timeout(60)
def test_a_claim_in_flight_or_an_empty_queue_is_no_stall_and_a_fleet_gone_is(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow claim will end (its result, its timeout): its worker comes back. Once it timed out, nothing will."""
    caplog.set_level(logging.WARNING, logger="lightning_attempts.server")
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=300, clock=clock)) as served:
        check(served)
        clock.advance(10 * STALL_SECONDS)  # idle workers, or none: nothing waits
        check(served)
        for i in range(2):
            served.call(served.server.queue_task({"n": i}, mode="train"))
        client = AgentLightningClient(served.endpoint, poll_interval=0.05)  # upstream's: an old worker
        task = client.poll_next_task()
        assert task is not None
        check(served)
        clock.advance(2 * STALL_SECONDS)  # one task waits, but a claim is in flight
        check(served)
        assert stalls(caplog) == []
        clock.advance(300)
        served.run(served.server.store.requeue_expired)  # the claim timed out; its worker never came back
        check(served)
        clock.advance(STALL_SECONDS)
        check(served)
        (said,) = stalls(caplog)
        assert said.getMessage().startswith("Stalled: 2 task(s) queued")
        assert (
            f"never came back with a result or a release (1 timed out; the latest {task.rollout_id}"
            in said.getMessage()
        )
        assert client.poll_next_task() is not None  # a worker asks: the stall is over
        check(served)
        stats = served.run(served.server.attempt_stats)
    assert (stats["stall_episodes"], stats["stall_ongoing_seconds"]) == (1, 0)


@pytest.mark.timeout(60)
def test_no_worker_at_all_is_said_so(served: Served, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lightning_attempts.server")
    served.call(served.server.queue_task({"n": 0}, mode="train"))
    check(served)
    clock.advance(STALL_SECONDS)
    check(served)
    (said,) = stalls(caplog)
    assert "No claim was ended under a worker that did not come back: the workers have stopped" in said.getMessage()
