"""retry_failed and /release in the store, over HTTP, and in the shim's own lifecycle and transport."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from lightning_attempts import AttemptAwareClient, AttemptAwareDataStore, AttemptAwareServer, AttemptRollout, Claim
from lightning_attempts.compat import AgentLightningServer, LegacyRollout
from lightning_attempts.models import MAX_FAILURE_LENGTH
from lightning_attempts.options import StalePolicy
from lightning_attempts.store import DropReason
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

Served = ServerThread[AttemptAwareServer]


def claim(store: AttemptAwareDataStore) -> tuple[str, str]:
    task = store.claim()
    assert task is not None and task.attempt_id is not None
    return task.rollout_id, task.attempt_id


def empty(rid: str, attempt: str | None, **fields: Any) -> AttemptRollout:
    return AttemptRollout(rollout_id=rid, attempt_id=attempt, **fields)


def outcomes(store: AttemptAwareDataStore, rid: str) -> list[str]:
    return [entry["outcome"] for entry in store.history(rid) or []]


# -- the store ------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["reject", "salvage"])
async def test_a_failed_result_is_retried_then_stored_marked(policy: StalePolicy) -> None:
    store = AttemptAwareDataStore(retry_failed=1, stale_policy=policy)
    rid = await store.add_task("x")
    _, first = claim(store)
    answer = store.submit(empty(rid, first), first, failed=True)
    assert (answer.status, answer.http_status, answer.claim_sequence_id) == ("retrying", 200, 1)
    assert answer.to_json()["status"] == "retrying"
    assert (store.stats()["queued"], store.stats()["completed_unretrieved"]) == (1, 0)
    late = store.submit(empty(rid, first, final_reward=1.0), first)  # a failed attempt's later result
    assert (late.status, late.reason) == ("dropped", DropReason.FAILED)
    _, second = claim(store)
    late = store.submit(empty(rid, first, final_reward=1.0), first)  # still dropped while re-claimed
    assert (late.status, late.reason) == ("dropped", DropReason.FAILED)
    stored = store.submit(empty(rid, second, metadata={"mine": 1}), second, failed=True)
    assert stored.status == "ok"  # no retry left
    [result] = await store.retrieve_completed_rollouts()
    assert result.metadata == {"mine": 1, "lightning_attempts": {"outcome": "failed", "claims": 2}}
    assert outcomes(store, rid) == ["failed", "failed"]
    stats = store.stats()
    assert (stats["failed_attempts"], stats["failure_retries"], stats["failed_stored"]) == (2, 1, 1)
    assert stats["dropped"]["failed"] == 2
    assert store.submit(empty(rid, second), second).status == "duplicate"


async def test_failed_is_ignored_without_retry_failed() -> None:
    store = AttemptAwareDataStore()
    rid = await store.add_task("x")
    _, attempt = claim(store)
    assert store.submit(empty(rid, attempt), attempt, failed=True).status == "ok"
    assert outcomes(store, rid) == ["completed"]
    assert store.stats()["failed_attempts"] == 0


async def test_retries_never_pass_max_claims() -> None:
    store = AttemptAwareDataStore(retry_failed=5, max_claims=2)
    rid = await store.add_task("x")
    _, first = claim(store)
    assert store.submit(empty(rid, first), first, failed=True).status == "retrying"
    _, second = claim(store)
    assert store.submit(empty(rid, second), second, failed=True).status == "ok"
    assert store.stats()["failed_stored"] == 1


async def test_an_old_clients_failed_result_is_retried() -> None:
    store = AttemptAwareDataStore(retry_failed=1)
    rid = await store.add_task("x")
    claim(store)
    assert store.submit(empty(rid, None), None, failed=True).status == "retrying"
    assert outcomes(store, rid) == ["failed"]


async def test_salvage_takes_no_failed_result_of_an_earlier_attempt(clock: ManualClock) -> None:
    store = AttemptAwareDataStore(task_timeout_seconds=10, stale_policy="salvage", retry_failed=1, clock=clock)
    rid = await store.add_task("x")
    _, first = claim(store)
    clock.advance(11)
    store.requeue_expired()
    late = store.submit(empty(rid, first), first, failed=True)
    assert (late.status, late.reason) == ("dropped", DropReason.SUPERSEDED)
    assert store.submit(empty(rid, first, final_reward=1.0), first).status == "ok"  # a real one is salvaged


async def test_a_failed_attempts_reason_is_kept_short_in_history_and_log(caplog: pytest.LogCaptureFixture) -> None:
    store = AttemptAwareDataStore(retry_failed=1)
    rid = await store.add_task("x")
    _, attempt = claim(store)
    reason = "ValueError: boom " + "x" * 1000
    with caplog.at_level(logging.WARNING, logger="lightning_attempts.store"):
        store.submit(empty(rid, attempt, failure=reason), attempt, failed=True)
    [entry] = store.history(rid) or []
    assert entry["failure"].startswith("ValueError: boom") and entry["failure"].endswith("(1017 chars)")
    assert len(entry["failure"]) < 250
    assert "ValueError: boom" in caplog.text and "x" * 300 not in caplog.text


async def test_release_requeues_at_once_and_only_the_live_claim() -> None:
    store = AttemptAwareDataStore(retry_failed=1)
    rid = await store.add_task("x")
    _, first = claim(store)
    released = store.release(rid, first)
    assert released.released and released.to_json() == {
        "status": "released",
        "rollout_id": rid,
        "attempt_id": first,
        "claim_sequence_id": 1,
        "requeued": True,
    }
    assert store.stats()["queued"] == 1
    before = store.stats()
    again = store.release(rid, first)
    assert (again.released, again.reason) == (False, DropReason.RELEASED)
    assert store.release("rollout-nope", first).reason == DropReason.UNKNOWN_ROLLOUT
    assert store.heartbeat(rid, first).reason == DropReason.RELEASED
    after = store.stats()
    assert {k: v for k, v in after.items() if not k.endswith("_stale")} == {
        k: v for k, v in before.items() if not k.endswith("_stale")
    }  # a refused release changes nothing
    assert after["releases_stale"] == 2
    _, second = claim(store)
    assert store.release(rid, "forged").reason == DropReason.UNKNOWN_ATTEMPT
    # A release never counts toward retry_failed: the first failure is still retried.
    assert store.submit(empty(rid, second), second, failed=True).status == "retrying"
    _, third = claim(store)
    assert store.submit(empty(rid, third, final_reward=1.0), third).status == "ok"
    assert outcomes(store, rid) == ["released", "failed", "completed"]
    assert store.release(rid, third).reason == DropReason.ALREADY_COMPLETED
    assert (store.stats()["releases"], store.stats()["requeues"]) == (1, 0)


async def test_releasing_the_last_allowed_claim_completes_the_task_empty() -> None:
    store = AttemptAwareDataStore(max_claims=1)
    rid = await store.add_task("x")
    _, attempt = claim(store)
    released = store.release(rid, attempt)
    assert released.released and released.to_json()["requeued"] is False
    [result] = await store.retrieve_completed_rollouts()
    assert result.rollout_id == rid and result.metadata["lightning_attempts"]["outcome"] == "max_claims_exceeded"


def test_bad_retry_failed_is_refused() -> None:
    with pytest.raises(ValueError, match="retry_failed"):
        AttemptAwareServer(port=0, retry_failed=-1)
    with pytest.raises(ValueError, match="retry_failed"):
        AttemptAwareDataStore(retry_failed=-1)


# -- the server -----------------------------------------------------------------


@pytest.fixture
def retrying(clock: ManualClock) -> Iterator[Served]:
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=60, retry_failed=1, clock=clock)) as running:
        yield running


def test_is_failed_result_by_default_and_overridden() -> None:
    server = AttemptAwareServer(port=0, retry_failed=1)
    assert server.is_failed_result(LegacyRollout(rollout_id="r"))  # what the runner posts after the agent raised
    assert server.is_failed_result(empty("r", "a", final_reward=1.0, failure="judge crashed"))
    assert not server.is_failed_result(LegacyRollout(rollout_id="r", final_reward=0.0))

    class MyServer(AttemptAwareServer):
        def is_failed_result(self, rollout: LegacyRollout) -> bool:
            return rollout.metadata.get("error") is not None or super().is_failed_result(rollout)

    mine = MyServer(port=0, retry_failed=1)
    assert mine.is_failed_result(LegacyRollout(rollout_id="r", final_reward=1.0, metadata={"error": "x"}))


def test_failed_results_and_releases_over_http(retrying: Served) -> None:
    rid = retrying.call(retrying.server.queue_task("x"))
    with httpx.Client(base_url=retrying.endpoint) as http:
        first = http.get("/task").json()["task"]
        answer = http.post("/rollout", json={"rollout_id": rid, "attempt_id": first["attempt_id"]})
        assert (answer.status_code, answer.json()["status"], answer.json()["claim_sequence_id"]) == (200, "retrying", 1)
        second = http.get("/task").json()["task"]
        assert second["claim_sequence_id"] == 2
        body = {"rollout_id": rid, "attempt_id": second["attempt_id"]}
        released = http.post("/release", json=body)
        assert (released.status_code, released.json()["status"]) == (200, "released")
        refused = http.post("/release", json=body)
        assert (refused.status_code, refused.json()["reason"]) == (409, "released")
        for bad in ({"rollout_id": rid}, {"rollout_id": rid, "attempt_id": 7}, {"attempt_id": "a" * 1000}):
            assert http.post("/release", json=bad).status_code == 422
        assert http.post("/release", content=b"{nope").status_code == 422
        third = http.get("/task").json()["task"]
        ok = http.post("/rollout", json={"rollout_id": rid, "attempt_id": third["attempt_id"], "final_reward": 1.0})
        assert ok.json()["status"] == "ok"
        history = http.get(f"/attempts/{rid}").json()
        assert [entry["outcome"] for entry in history] == ["failed", "released", "completed"]
        stats = http.get("/attempts/stats").json()
        assert (stats["failed_attempts"], stats["failure_retries"], stats["releases"], stats["releases_stale"]) == (
            1,
            1,
            1,
            1,
        )
        metrics = http.get("/metrics")
    if metrics.status_code == 200:  # with prometheus_client installed
        lines = set(metrics.text.splitlines())
        for line in (
            "lightning_attempts_failed_attempts_total 1.0",
            "lightning_attempts_failure_retries_total 1.0",
            "lightning_attempts_failed_stored_total 0.0",
            "lightning_attempts_releases_total 1.0",
        ):
            assert line in lines


def test_an_overlong_failure_text_is_refused(retrying: Served) -> None:
    rid = retrying.call(retrying.server.queue_task("x"))
    with httpx.Client(base_url=retrying.endpoint) as http:
        task = http.get("/task").json()["task"]
        body = {"rollout_id": rid, "attempt_id": task["attempt_id"], "failure": "x" * (MAX_FAILURE_LENGTH + 1)}
        answer = http.post("/rollout", json=body)
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "failure"]
        assert "xxxx" not in answer.text
        assert [e["outcome"] for e in http.get(f"/attempts/{rid}").json()] == ["in_flight"]


def test_an_explicit_failure_is_logged_even_without_retries(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    rid = served.call(served.server.queue_task("x"))
    with httpx.Client(base_url=served.endpoint) as http, caplog.at_level(logging.INFO, "lightning_attempts.server"):
        task = http.get("/task").json()["task"]
        body = {"rollout_id": rid, "attempt_id": task["attempt_id"], "failure": "TimeoutError: judge"}
        assert http.post("/rollout", json=body).json()["status"] == "ok"  # retry_failed=0: stored as upstream does
    assert "TimeoutError: judge" in caplog.text


# -- the shim -------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_closing_the_client_releases_its_open_claims(served: Served, use_async: bool) -> None:
    rids = [served.call(served.server.queue_task(i)) for i in range(2)]
    client = AttemptAwareClient(served.endpoint, poll_interval=0.01)

    async def claim_and_aclose() -> None:
        await client.poll_next_task_async()
        await client.poll_next_task_async()  # same task: the first claim is released as skipped
        await client.aclose()

    if use_async:
        asyncio.run(claim_and_aclose())
    else:
        client.poll_next_task()
        client.poll_next_task()
        client.close()
    assert client.open_claims() == []
    assert served.server.attempt_stats()["releases"] == 2
    histories = [served.server.attempt_history(rid) or [] for rid in rids]
    assert sorted(entry["outcome"] for history in histories for entry in history) == ["released"] * 2


def test_the_client_is_quiet_against_an_unpatched_server(caplog: pytest.LogCaptureFixture) -> None:
    with serve_in_thread(AgentLightningServer(port=0)) as upstream:
        endpoint = f"http://127.0.0.1:{upstream.server._uvicorn_server.servers[0].sockets[0].getsockname()[1]}"  # pyright: ignore[reportPrivateUsage]
        for i in range(2):
            upstream.call(upstream.server.queue_task(i))
        client = AttemptAwareClient(endpoint, poll_interval=0.01)
        with caplog.at_level(logging.INFO, "lightning_attempts"):
            assert client.poll_next_task() is not None
            assert client.poll_next_task() is not None  # the first one skipped: nothing to release there
            assert not client.release(Claim("rollout-x", "a"))  # /release does not exist: 404
            client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("lightning_attempts")]


def _child_claims_and_ends(client: AttemptAwareClient) -> None:
    assert client.poll_next_task() is not None  # never submitted: released when this worker process ends


def test_a_forked_worker_releases_only_its_own_claims_when_it_ends(served: Served) -> None:
    parents, childs = (served.call(served.server.queue_task(name)) for name in ("parent", "child"))
    client = AttemptAwareClient(served.endpoint, poll_interval=0.01)
    client.poll_next_task()  # the parent's claim, open across the fork
    child = multiprocessing.get_context("fork").Process(target=_child_claims_and_ends, args=(client,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert served.server.attempt_history(childs)[0]["outcome"] == "released"  # pyright: ignore[reportOptionalSubscript]
    assert served.server.attempt_history(parents)[0]["outcome"] == "in_flight"  # pyright: ignore[reportOptionalSubscript]
    assert [claim.rollout_id for claim in client.open_claims()] == [parents]
    client.close()


@respx.mock
def test_a_server_without_release_is_asked_once() -> None:
    route = respx.post("http://trainer.test/release").mock(return_value=httpx.Response(404, json={"detail": "x"}))
    client = AttemptAwareClient("http://trainer.test")
    assert not client.release(Claim("r", "a"))
    assert not client.release(Claim("r", "b"))
    assert route.call_count == 1
    client.close()


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
@respx.mock
def test_a_failed_release_is_not_raised(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    respx.post("http://trainer.test/release").mock(side_effect=error)
    client = AttemptAwareClient("http://trainer.test")
    with caplog.at_level(logging.INFO, "lightning_attempts"):
        assert not client.release(Claim("r", "a"))
        assert not asyncio.run(client.release_async(Claim("r", "b")))
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    client.close()
