"""A worker that cannot run tasks costs time, not tasks: with the release's own runner, over HTTP.

One healthy worker and one whose runner cannot fetch resources (its requests for them fail, as
behind a bad proxy): the runner skips each claim and polls again, and the shim gives the claim
back. Before, with the switch's defaults, those releases counted toward ``max_claims`` and 17 of
20 tasks were completed empty in 0.6 s. Now every task runs on the healthy worker, the broken one is
named once, and a fleet in which no worker can run tasks (a trainer that never published resources)
completes nothing empty in a hurry, and says why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import pytest
from agentlightning import LitAgent

from lightning_attempts import AttemptAwareClient, AttemptAwareServer
from lightning_attempts.client import protocol
from lightning_attempts.switch.variables import SWITCH_DEFAULTS
from lightning_attempts.testing import ServerThread, serve_in_thread

from ..upstream import RESOURCES, make_runner
from ..waiting import until

Served = ServerThread[AttemptAwareServer]
TASKS = 20


class Agent(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Rewards 1.0 after ``seconds``; records which tasks it ran."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.ran: list[str] = []

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        self.ran.append(rollout_id)
        time.sleep(self.seconds)
        return 1.0


class Stopped(BaseException):
    """Raised out of a stopped worker's next request, so that its runner's endless poll loop ends."""


class Client(AttemptAwareClient):
    """The shim, whose requests end its runner once ``stopping`` is set."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint, poll_interval=0.05, poll_wait=0.5)
        self.stopping = threading.Event()

    def _request_json(self, url: str) -> dict[str, Any] | None:
        if self.stopping.is_set():
            raise Stopped
        return super()._request_json(url)


class NoResourcesClient(Client):
    """Its requests for resources fail (a bad proxy, a network error): the runner skips every claim."""

    def _request_json(self, url: str) -> dict[str, Any] | None:
        answer = super()._request_json(url)
        return None if "/resources" in url else answer


@contextmanager
def serve(**options: Any) -> Generator[Served]:
    chosen: dict[str, Any] = {**SWITCH_DEFAULTS, "task_timeout_seconds": 60.0, **options}
    server = AttemptAwareServer(port=0, **chosen)
    with serve_in_thread(server) as running:
        yield running


@contextmanager
def workers(*clients: tuple[Client, Agent]) -> Generator[None]:
    """Run each client's runner in a thread of its own; stop them all on exit."""

    def loop(client: Client, agent: Agent, worker_id: int) -> None:
        runner = make_runner(agent, client, worker_id)
        try:
            while True:
                runner.run()
        except Stopped:
            client.close()

    threads = [
        threading.Thread(target=loop, args=(client, agent, n), daemon=True) for n, (client, agent) in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for client, _ in clients:
            client.stopping.set()
        for thread in threads:
            thread.join(timeout=30)
            assert not thread.is_alive()


@pytest.fixture
def fast_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shim waits 1 ms after a skipped claim, at most 10 ms: a broken worker gives claims back by the hundred."""
    # raising=False: on code without the backoff these tests run too, and fail
    monkeypatch.setattr(protocol, "SKIP_BACKOFF", 0.001, raising=False)
    monkeypatch.setattr(protocol, "SKIP_BACKOFF_MAX", 0.01, raising=False)


@pytest.mark.usefixtures("fast_skips")
def test_a_worker_that_cannot_fetch_resources_costs_no_task(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lightning_attempts")
    with serve() as served:
        served.call(served.server.update_resources(RESOURCES))
        rids = [served.call(served.server.queue_task({"n": n}, mode="train")) for n in range(TASKS)]
        healthy, broken = Agent(0.05), Agent(0.0)
        with workers((NoResourcesClient(served.endpoint), broken), (Client(served.endpoint), healthy)):
            rollouts = served.call(served.server.wait_for_rollouts(rids, timeout=60))
        assert sorted(r.rollout_id for r in rollouts) == sorted(rids)
        assert [r.final_reward for r in rollouts] == [1.0] * TASKS  # none completed empty
        assert broken.ran == [] and sorted(healthy.ran) == sorted(rids)
        stats = served.server.attempt_stats()
        assert stats["given_up"] == stats["max_claims_exceeded"] == 0
        assert stats["releases_unrun"] >= 10 and stats["releases_unrun"] == stats["releases"]
        [(worker, given_back)] = served.server.store.given_back_by_worker().items()
        assert worker.endswith(" at 127.0.0.1") and given_back == stats["releases_unrun"]
        released = [e for rid in rids for e in served.server.attempt_history(rid) or [] if e["outcome"] == "released"]
        assert {e["release_reason"] for e in released} == {"no_resources"}


@pytest.mark.usefixtures("fast_skips")
def test_when_no_worker_can_run_a_task_nothing_is_completed_empty_and_the_server_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The trainer never called update_resources: upstream's runner skips every task for ever; here too, loudly."""
    caplog.set_level(logging.INFO, logger="lightning_attempts")
    with serve() as served:
        rids = [served.call(served.server.queue_task({"n": n}, mode="train")) for n in range(2)]
        agent = Agent(0.0)
        with workers((Client(served.endpoint), agent)):
            until(lambda: served.server.attempt_stats()["releases_unrun"] >= 20)
        stats = served.server.attempt_stats()
        assert stats["releases_unrun"] >= 20 and stats["given_up"] == 0
        assert stats["workers_giving_back"] == 1 and stats["unrun_since_last_result"] == stats["releases_unrun"]
        assert agent.ran == [] and served.call(served.server.wait_for_rollouts(rids, timeout=0.01)) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    [worker_warning] = [m for m in warnings if "has given back 3 claims without running them" in m]
    assert "no_resources x3" in worker_warning and "must call update_resources" in worker_warning
    [fleet_warning] = [m for m in warnings if m.startswith("No worker is running tasks: 10 claims")]
    assert "do not count toward max_claims" in fleet_warning
    client_warnings = [m for m in warnings if "gave back 3 claims in a row without running them" in m]
    assert len(client_warnings) == 1
