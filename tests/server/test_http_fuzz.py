"""The HTTP surface fuzzed from the server's own OpenAPI schema: no 5xx, and no refused request changes state.

Run on an open server and on a keyed one, where each generated request is also sent without the key: 401.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from lightning_attempts import AttemptAwareServer
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from ..upstream import RESOURCES

Served = ServerThread[AttemptAwareServer]
KEY = "fuzz-key-0123"


@pytest.fixture(params=[None, KEY], ids=["open", "keyed"])
def live(request: pytest.FixtureRequest) -> Iterator[Served]:
    """A server with a claimed task, a queued one and a completed one, so requests meet real state."""
    # Long polls are held no longer than 50 ms, so that generated waits do not stall the run.
    server = AttemptAwareServer(
        port=0,
        task_timeout_seconds=60,
        unresponsive_seconds=30,
        max_poll_wait=0.05,
        clock=ManualClock(),
        api_key=request.param,
        producer_api=True,
    )
    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        for sample in ("done", "claimed", "queued"):
            served.call(server.queue_task(sample))
        done = server.store.claim()
        assert done is not None
        server.store.submit(done.model_copy(), done.attempt_id)  # type: ignore[arg-type]
        server.store.claim()
        yield served


def state(server: AttemptAwareServer) -> dict[str, Any]:
    """What a refused request must not change: everything but the drop and refusal counters."""
    stats = {
        k: v
        for k, v in server.attempt_stats().items()
        if not k.startswith(("dropped", "refused", "heartbeats", "releases_stale", "unauthorized"))
    }
    store = server.store
    return {
        "stats": stats,
        "queue": list(store._book.queue),  # pyright: ignore[reportPrivateUsage]
        "stored": sorted(store._completed_rollouts),  # pyright: ignore[reportPrivateUsage]
        "resources": sorted(store._resource_versions),  # pyright: ignore[reportPrivateUsage]
    }


def test_no_server_errors_and_refusals_change_nothing(live: Served) -> None:
    """Every operation in the server's OpenAPI schema, with generated valid and invalid requests."""
    keyed = live.server.requires_key
    headers = {"Authorization": f"Bearer {KEY}"} if keyed else {}
    api = schemathesis.openapi.from_dict(httpx.get(f"{live.endpoint}/openapi.json", headers=headers).json())
    operations: list[Any] = [result.ok() for result in api.get_all_operations()]  # pyright: ignore
    assert {op.path for op in operations} >= {"/task", "/rollout", "/heartbeat", "/attempts/stats"}
    assert {op.path for op in operations} >= {"/tasks", "/tasks/cancel", "/resources", "/rollouts/wait"}  # producers
    calls: list[tuple[str, int]] = []

    positive: Any = schemathesis.GenerationMode.POSITIVE
    negative: Any = schemathesis.GenerationMode.NEGATIVE
    # Invalid requests exist only where there is a body to get wrong.
    runs = [(op, positive) for op in operations] + [(op, negative) for op in operations if op.method == "post"]
    for operation, mode in runs:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        )
        def fuzz(case: Any) -> None:
            before = state(live.server)
            if keyed:
                refused = case.call(base_url=live.endpoint, timeout=10)
                assert refused.status_code == 401, (case.method, case.path, refused.status_code)
                assert state(live.server) == before, (case.method, case.path, "refused")
            response = case.call(base_url=live.endpoint, timeout=10, headers=headers)
            calls.append((case.path, response.status_code))
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            if response.status_code >= 400 and case.path != "/task":  # GET /task never refuses
                assert state(live.server) == before, (case.method, case.path, response.status_code)

        fuzz()
    statuses = Counter(status for _, status in calls)
    assert statuses[422] > 0 and statuses[200] > 0  # malformed and valid requests were both exercised
    assert live.server.attempt_stats()["unauthorized"] == (len(calls) if keyed else 0)
