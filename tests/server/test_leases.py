"""Heartbeats, dead-worker detection, max_claims, batch fencing, metrics and attempt history."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentlightning import LitAgent

from lightning_attempts import AttemptAwareClient, AttemptAwareDataStore, AttemptAwareServer, AttemptRollout, DropReason
from lightning_attempts.compat import AgentLightningClient
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from .. import prewarmed
from ..paths import SCRIPTS
from ..upstream import RESOURCES, make_runner, run_until_stopped, stop_fleet
from ..waiting import until

TIMEOUT, WINDOW = 300.0, 10.0
Served = ServerThread[AttemptAwareServer]


@pytest.fixture
def store(clock: ManualClock) -> AttemptAwareDataStore:
    return AttemptAwareDataStore(task_timeout_seconds=TIMEOUT, unresponsive_seconds=WINDOW, clock=clock)


@pytest.fixture
def leased(clock: ManualClock) -> Iterator[Served]:
    server = AttemptAwareServer(
        port=0, task_timeout_seconds=TIMEOUT, unresponsive_seconds=WINDOW, max_claims=3, clock=clock
    )
    with serve_in_thread(server) as running:
        yield running


def claim(store: AttemptAwareDataStore, *, leased: bool = False) -> tuple[str, str]:
    task = store.claim(leased=leased)
    assert task is not None and task.attempt_id is not None
    return task.rollout_id, task.attempt_id


async def test_heartbeats_keep_a_slow_worker_its_claim(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    await store.add_task("slow")
    rid, attempt = claim(store)
    for _ in range(5):  # runs 2.5x the window, heartbeating every half window
        clock.advance(WINDOW / 2)
        lease = store.heartbeat(rid, attempt)
        assert lease.current and lease.lease_seconds == WINDOW
        assert store.requeue_expired() == 0
    assert store.submit(AttemptRollout(rollout_id=rid, attempt_id=attempt), attempt).status == "ok"
    assert store.stats()["requeues"] == 0 and store.stats()["heartbeats"] == 5


async def test_a_silent_claim_is_requeued_after_the_window(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    await store.add_task("a")
    await store.add_task("b")
    silent_rid, silent = claim(store, leased=True)  # its worker said it heartbeats, then went silent
    alive_rid, alive = claim(store, leased=True)
    clock.advance(WINDOW * 0.9)
    store.heartbeat(alive_rid, alive)
    assert store.requeue_expired() == 0
    clock.advance(WINDOW * 0.2)
    assert store.requeue_expired() == 1  # the silent one, long before the 300 s timeout
    stats = store.stats()
    assert (stats["requeues"], stats["requeues_unresponsive"], stats["claims_in_flight"]) == (1, 1, 1)
    lease = store.heartbeat(silent_rid, silent)
    assert (lease.current, lease.reason) == (False, DropReason.SUPERSEDED)
    assert claim(store)[0] == silent_rid


async def test_a_claim_that_never_heartbeats_keeps_it_until_its_timeout(
    store: AttemptAwareDataStore, clock: ManualClock
) -> None:
    """An old worker never heartbeats and never says it does: silence is no sign of death for it."""
    await store.add_task("old worker's")
    rid, attempt = claim(store)
    assert store.next_deadline() == clock() + TIMEOUT  # no earlier deadline for silence
    clock.advance(TIMEOUT - 1)  # 29 windows of silence
    assert store.requeue_expired() == 0
    clock.advance(2)
    assert store.requeue_expired() == 1
    assert store.stats()["requeues_unresponsive"] == 0
    assert [entry["outcome"] for entry in store.history(rid) or []] == ["timed_out"]
    assert (store.history(rid) or [{}])[0]["leased"] is False
    assert store.submit(AttemptRollout(rollout_id=rid, attempt_id=attempt), attempt).reason == DropReason.SUPERSEDED


async def test_a_first_heartbeat_leases_the_claim(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    await store.add_task("a")
    rid, attempt = claim(store)
    clock.advance(WINDOW * 5)  # not leased yet: silence costs nothing
    assert store.requeue_expired() == 0
    assert store.heartbeat(rid, attempt).current
    assert (store.history(rid) or [{}])[0]["leased"] is True
    assert store.next_deadline() == clock() + WINDOW
    clock.advance(WINDOW + 0.5)
    assert store.requeue_expired() == 1
    assert store.stats()["requeues_unresponsive"] == 1
    assert [entry["outcome"] for entry in store.history(rid) or []] == ["unresponsive"]


async def test_equal_silences_end_in_the_order_of_last_word(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    """As the model-based test found: a claim leased by a beat after another's leased claim, at the same time."""
    await store.add_task("a")
    await store.add_task("b")
    beating, attempt = claim(store)  # not leased yet
    leased, _ = claim(store, leased=True)
    assert store.heartbeat(beating, attempt).current  # leased now, its last word after the other's
    clock.advance(WINDOW + 1)
    assert store.requeue_expired() == 2
    assert [claim(store)[0], claim(store)[0]] == [leased, beating]


async def test_leasing_a_claim_brings_the_next_deadline_forward(
    store: AttemptAwareDataStore, clock: ManualClock
) -> None:
    """The server's requeue timer is armed for next_deadline(): it must hear of every earlier one."""
    moved: list[float | None] = []
    store.on_deadline = lambda: moved.append(store.next_deadline())
    for name in "abc":
        await store.add_task(name)
    old_rid, old = claim(store)  # not leased: its timeout is the next deadline
    assert moved == [clock() + TIMEOUT]
    clock.advance(1)
    claim(store)  # not leased, later deadline: nothing moved
    assert len(moved) == 1
    claim(store, leased=True)  # leased: its window ends long before the first timeout
    assert moved[-1] == clock() + WINDOW and len(moved) == 2
    clock.advance(1)
    store.heartbeat(old_rid, old)  # a second leased claim: its window ends after the first one's
    assert len(moved) == 2


async def test_heartbeats_do_not_extend_the_hard_timeout(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    await store.add_task("x")
    rid, attempt = claim(store)
    while clock() - 1000.0 < TIMEOUT - WINDOW / 2:
        clock.advance(WINDOW / 2)
        assert store.heartbeat(rid, attempt).current
    assert store.requeue_expired() == 0
    clock.advance(WINDOW / 2 + 0.001)
    store.heartbeat(rid, attempt)
    assert store.requeue_expired() == 1
    assert store.history(rid) is not None
    assert [entry["outcome"] for entry in store.history(rid) or []] == ["timed_out"]


async def test_stale_heartbeats_say_why_and_change_nothing(store: AttemptAwareDataStore, clock: ManualClock) -> None:
    await store.add_task("done")
    await store.add_task("cancelled")
    done_rid, done = claim(store)
    cancelled_rid, cancelled = claim(store)
    store.submit(AttemptRollout(rollout_id=done_rid, attempt_id=done), done)
    store.cancel([cancelled_rid])
    before = store.stats()
    cases = {
        (done_rid, done): DropReason.ALREADY_COMPLETED,
        (cancelled_rid, cancelled): DropReason.CANCELLED,
        (done_rid, "forged"): DropReason.UNKNOWN_ATTEMPT,
        ("rollout-nope", "x"): DropReason.UNKNOWN_ROLLOUT,
    }
    for (rid, attempt), reason in cases.items():
        assert store.heartbeat(rid, attempt).reason == reason
    after = store.stats()
    assert after.pop("heartbeats_stale") == before.pop("heartbeats_stale") + len(cases)
    assert after == before


async def test_max_claims_completes_the_task_empty(clock: ManualClock) -> None:
    store = AttemptAwareDataStore(task_timeout_seconds=TIMEOUT, max_claims=2, clock=clock)
    await store.add_task("hopeless")
    rid, _ = claim(store)
    clock.advance(TIMEOUT + 1)
    assert store.requeue_expired() == 1
    _, second = claim(store)
    clock.advance(TIMEOUT + 1)
    assert store.requeue_expired() == 1
    assert store.claim() is None
    [rollout] = await store.retrieve_completed_rollouts()
    assert (rollout.rollout_id, rollout.final_reward) == (rid, None)
    assert rollout.metadata == {"lightning_attempts": {"outcome": "max_claims_exceeded", "claims": 2}}
    assert store.stats()["max_claims_exceeded"] == 1
    late = store.submit(AttemptRollout(rollout_id=rid, attempt_id=second), second)
    assert late.reason == DropReason.ALREADY_COMPLETED


def test_heartbeat_over_http(leased: Served, clock: ManualClock) -> None:
    rid = leased.call(leased.server.queue_task("x"))
    with httpx.Client(base_url=leased.endpoint) as http:
        task = http.get("/task").json()["task"]
        assert task["lease_seconds"] == WINDOW
        beat = http.post("/heartbeat", json={"rollout_id": rid, "attempt_id": task["attempt_id"]})
        assert beat.status_code == 200
        assert beat.json() | {"expires_in": 0} == {
            "status": "ok",
            "rollout_id": rid,
            "attempt_id": task["attempt_id"],
            "claim_sequence_id": 1,
            "lease_seconds": WINDOW,
            "expires_in": 0,
        }
        clock.advance(WINDOW + 1)
        assert http.get("/task").json()["task"]["claim_sequence_id"] == 2
        stale = http.post("/heartbeat", json={"rollout_id": rid, "attempt_id": task["attempt_id"]})
        assert (stale.status_code, stale.json()["status"], stale.json()["reason"]) == (409, "stale", "superseded")
        # How the attempt ended, as /attempts/{rollout_id} says it; the reason is what its result would meet.
        assert stale.json()["outcome"] == "unresponsive" == http.get(f"/attempts/{rid}").json()[0]["outcome"]
        released = http.post("/release", json={"rollout_id": rid, "attempt_id": task["attempt_id"]})
        assert (released.status_code, released.json()["outcome"]) == (409, "unresponsive")
        unknown = http.post("/heartbeat", json={"rollout_id": rid, "attempt_id": "never-issued"}).json()
        assert (unknown["reason"], unknown["outcome"]) == ("unknown_attempt", None)
        malformed = http.post("/heartbeat", json={"rollout_id": rid})
        assert malformed.status_code == 422


WORKER = textwrap.dedent(
    """
    import sys, httpx
    endpoint = sys.argv[1]
    task = httpx.get(endpoint + "/task").json()["task"]
    beat = {"rollout_id": task["rollout_id"], "attempt_id": task["attempt_id"]}
    assert httpx.post(endpoint + "/heartbeat", json=beat).status_code == 200
    print(task["rollout_id"], flush=True)
    sys.stdin.read()  # works forever, until killed
    """
)


def test_a_killed_worker_loses_its_claim_within_the_window(leased: Served, clock: ManualClock) -> None:
    rid = leased.call(leased.server.queue_task("x"))
    worker = prewarmed.popen(
        [sys.executable, "-c", WORKER, leased.endpoint], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == rid
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
    with httpx.Client(base_url=leased.endpoint) as http:
        clock.advance(WINDOW - 1)
        assert http.get("/task").json()["is_available"] is False
        clock.advance(2)  # past the window, 290 s before the task timeout
        task = http.get("/task").json()["task"]
        assert (task["rollout_id"], task["claim_sequence_id"]) == (rid, 2)
        history = http.get(f"/attempts/{rid}").json()
        assert [entry["outcome"] for entry in history] == ["unresponsive", "in_flight"]
        assert history[0]["last_heartbeat_at"] is not None


def test_max_claims_over_http_lets_the_trainer_finish(leased: Served, clock: ManualClock) -> None:
    rid = leased.call(leased.server.queue_task("hopeless"))
    with httpx.Client(base_url=leased.endpoint) as http:
        for sequence in (1, 2, 3):  # each claim leased: the worker says it heartbeats, then never does
            assert http.get("/task", params={"heartbeats": 1}).json()["task"]["claim_sequence_id"] == sequence
            clock.advance(WINDOW + 1)
        assert http.get("/task").json()["is_available"] is False
    rollout = leased.call(leased.server.poll_completed_rollout(rid, timeout=5))
    assert rollout is not None
    assert rollout.metadata["lightning_attempts"] == {"outcome": "max_claims_exceeded", "claims": 3}


def test_history_is_readable_and_bounded(clock: ManualClock) -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=TIMEOUT, max_remembered=1, clock=clock)
    with serve_in_thread(server) as served, httpx.Client(base_url=served.endpoint) as http:
        rids = [served.call(server.queue_task(i)) for i in range(2)]
        assert http.get(f"/attempts/{rids[0]}").json() == []  # queued, never claimed
        for rid in rids:
            task = http.get("/task").json()["task"]
            http.post("/rollout", json={"rollout_id": rid, "attempt_id": task["attempt_id"]})
        [entry] = http.get(f"/attempts/{rids[1]}").json()
        assert (entry["claim_sequence_id"], entry["outcome"]) == (1, "completed")
        assert entry["ended_at"] >= entry["claimed_at"]
        forgotten = http.get(f"/attempts/{rids[0]}")  # beyond max_remembered
        assert forgotten.status_code == 404


def test_metrics_are_exposed_for_prometheus(leased: Served) -> None:
    leased.call(leased.server.queue_task("x"))
    with httpx.Client(base_url=leased.endpoint) as http:
        http.get("/task")
        http.post("/rollout", json={"rollout_id": "rollout-nope", "attempt_id": "a"})
        metrics = http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    lines = set(metrics.text.splitlines())
    assert "lightning_attempts_claims_total 1.0" in lines
    assert 'lightning_attempts_dropped_total{reason="unknown_rollout"} 1.0' in lines
    assert "lightning_attempts_claims_in_flight 1.0" in lines
    assert "lightning_attempts_claims_kept_past_timeout_total 0.0" in lines
    assert "lightning_attempts_longest_kept_claim_seconds 0.0" in lines


def test_without_prometheus_client_metrics_answers_404_saying_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    caplog.set_level(logging.INFO, logger="lightning_attempts.server")
    with serve_in_thread(AttemptAwareServer(port=0)) as served:
        missing = httpx.get(served.endpoint + "/metrics")
        assert missing.status_code == 404
        assert "lightning-attempts[metrics]" in missing.json()["detail"]
        assert httpx.get(served.endpoint + "/attempts/stats").status_code == 200
    said = [r.getMessage() for r in caplog.records if "/metrics" in r.getMessage()]
    assert said == ["/metrics answers 404: prometheus-client is missing (the lightning-attempts[metrics] extra)"]
    assert caplog.records[[r.getMessage() for r in caplog.records].index(said[0])].levelno == logging.INFO


def test_bad_lease_options_are_refused() -> None:
    bad: list[dict[str, Any]] = [{"max_claims": 0}, {"unresponsive_seconds": 0}]
    for options in bad:
        with pytest.raises(ValueError):
            AttemptAwareDataStore(**options)


def test_a_claim_is_leased_over_http_only_when_its_worker_says_it_heartbeats(
    leased: Served, clock: ManualClock
) -> None:
    quiet = leased.call(leased.server.queue_task("old worker's"))
    beating = leased.call(leased.server.queue_task("shim's"))
    with httpx.Client(base_url=leased.endpoint) as http:
        assert http.get("/task").json()["task"]["rollout_id"] == quiet
        task = http.get("/task", params={"heartbeats": "true"}).json()["task"]
        assert (task["rollout_id"], task["lease_seconds"]) == (beating, WINDOW)
        assert [e["leased"] for e in http.get(f"/attempts/{quiet}").json()] == [False]
        assert [e["leased"] for e in http.get(f"/attempts/{beating}").json()] == [True]
        clock.advance(WINDOW + 1)
        again = http.get("/task").json()["task"]  # only the leased claim was requeued
        assert (again["rollout_id"], again["claim_sequence_id"]) == (beating, 2)
        assert http.get("/task").json()["is_available"] is False
        assert http.get("/task", params={"heartbeats": "maybe"}).status_code == 422
    assert leased.server.attempt_stats()["requeues_unresponsive"] == 1


SHIM_WORKER = SCRIPTS / "shim_worker.py"
LEASE = 1.5


class Fleet(LitAgent):  # pyright: ignore[reportMissingTypeArgument]
    """Workers' agent: a ``slow`` task takes three leases of work; a ``stop`` task ends its worker."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: set[int] = set()

    def training_rollout(self, task: Any, rollout_id: str, resources: Any) -> float:  # type: ignore[override]
        if task.get("stop"):
            self.stopped.add(threading.get_ident())
        elif task.get("slow"):
            time.sleep(3 * LEASE)  # a long rollout, with no word from an old worker
        return 1.0


@pytest.mark.timeout(120)
def test_a_killed_shim_worker_costs_the_lease_and_an_old_worker_is_never_requeued_for_silence(
    tmp_path: Path,
) -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=600, unresponsive_seconds=LEASE)
    started = tmp_path / "started"
    agent = Fleet()
    threads: list[threading.Thread] = []
    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        doomed = served.call(server.queue_task({"n": 0}, mode="train"))
        worker = prewarmed.popen([sys.executable, str(SHIM_WORKER), served.endpoint, str(started)])
        try:
            # Importing agentlightning 0.2+ takes seconds, more on a loaded machine.
            until(lambda: worker.poll() is not None or (started.exists() and started.read_text() == doomed), 120)
            assert worker.poll() is None, "the worker died before its rollout"
            assert [e["leased"] for e in served.run(lambda: server.attempt_history(doomed)) or []] == [True]
            slow = served.call(server.queue_task({"slow": True}, mode="train"))
            old = make_runner(agent, AgentLightningClient(served.endpoint, poll_interval=0.05), worker_id=1)
            threads.append(threading.Thread(target=run_until_stopped, args=(agent, old, False), daemon=True))
            threads[-1].start()
            until(lambda: served.run(lambda: server.attempt_history(slow)) != [])
            worker.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            assert worker.wait(timeout=30) == -signal.SIGKILL
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
        rescuer = make_runner(agent, AttemptAwareClient(served.endpoint, poll_interval=0.05), worker_id=2)
        threads.append(threading.Thread(target=run_until_stopped, args=(agent, rescuer, False), daemon=True))
        threads[-1].start()

        def stored(rollout_id: str) -> bool:
            history = served.run(lambda: server.attempt_history(rollout_id)) or []
            return any(e["outcome"] == "completed" for e in history)

        # The server's word, not the agent's: a rollout is posted only after the agent returns.
        until(lambda: stored(doomed) and stored(slow), timeout=60)
        waited = time.monotonic() - killed
        history = served.run(lambda: server.attempt_history(doomed)) or []
        assert [e["outcome"] for e in history] == ["unresponsive", "completed"], history
        assert waited < 20 * LEASE, waited  # a lease or so after the kill, not the 600 s timeout
        slow_history = served.run(lambda: server.attempt_history(slow)) or []
        assert [(e["outcome"], e["leased"]) for e in slow_history] == [("completed", False)], slow_history
        assert server.attempt_stats()["requeues_unresponsive"] == 1
        stop_fleet(served, threads)


@pytest.mark.timeout(60)
def test_an_async_worker_that_blocks_its_loop_keeps_its_lease() -> None:
    """Beats come from a thread: an agent's synchronous call in an async rollout is no dead worker."""
    server = AttemptAwareServer(port=0, task_timeout_seconds=600, unresponsive_seconds=LEASE)
    with serve_in_thread(server) as served:
        rid = served.call(server.queue_task({"n": 0}, mode="train"))
        client = AttemptAwareClient(served.endpoint, poll_wait=None)

        async def rollout() -> dict[str, Any] | None:
            task = await client.poll_next_task_async()
            assert task is not None and task.rollout_id == rid
            time.sleep(3 * LEASE)  # blocks the loop: no task of it runs
            return await client.post_rollout_async(AttemptRollout(rollout_id=rid, final_reward=1.0))

        try:
            answer = asyncio.run(rollout())
        finally:
            client.close()
        assert answer is not None and answer["status"] == "ok", answer
        history = served.run(lambda: server.attempt_history(rid)) or []
        assert [(e["outcome"], e["leased"]) for e in history] == [("completed", True)], history
        assert server.attempt_stats()["requeues_unresponsive"] == 0


@pytest.mark.timeout(60)
def test_a_client_used_again_after_close_still_heartbeats() -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=600, unresponsive_seconds=LEASE)
    with serve_in_thread(server) as served:
        first = served.call(server.queue_task({"n": 0}, mode="train"))
        second = served.call(server.queue_task({"n": 1}, mode="train"))
        client = AttemptAwareClient(served.endpoint, poll_wait=None)
        try:
            for rid in (first, second):  # close() stops the heartbeat thread; the next claim starts another
                task = client.poll_next_task()
                assert task is not None and task.rollout_id == rid
                time.sleep(2 * LEASE)
                answer = client.post_rollout(AttemptRollout(rollout_id=rid, final_reward=1.0))
                assert answer is not None and answer["status"] == "ok", answer
                client.close()
        finally:
            client.close()
        assert server.attempt_stats()["requeues_unresponsive"] == 0
