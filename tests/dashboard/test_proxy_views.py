"""The daemon's LLM proxy as the dashboard and ``/metrics`` show it: its calls per attempt, refusals, latency."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lightning_attempts import AttemptAwareServer
from lightning_attempts.llm_proxy import AttachedProxy
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from ..llm_proxy.stand_in_vllm import StandInVllm

TIMEOUT = 10.0
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
Running = tuple[ServerThread[AttemptAwareServer], AttachedProxy]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def running(clock: ManualClock) -> Iterator[Running]:
    server = AttemptAwareServer(port=0, task_timeout_seconds=TIMEOUT, clock=clock)
    with serve_in_thread(server) as served:
        backend = StandInVllm("alpha")
        served.call(backend.start())
        proxy = AttachedProxy(server, lambda: [backend.address], free_port(), TIMEOUT)
        served.call(proxy.start())
        try:
            yield served, proxy
        finally:
            served.call(backend.stop())


def test_an_attempts_calls_and_the_proxys_refusals_show(running: Running, clock: ManualClock) -> None:
    served, proxy = running
    server, url = served.server, served.endpoint
    rollout_id = served.call(server.queue_task({"n": 1}))
    first = served.run(lambda: server.store.claim())
    assert first is not None and first.attempt_id is not None
    call = f"http://127.0.0.1:{proxy.port}/rollout/{rollout_id}/attempt/{first.attempt_id}/v1/chat/completions"
    assert httpx.post(call, json=CHAT, timeout=30).status_code == 200
    clock.advance(TIMEOUT + 1)
    served.run(lambda: server.store.requeue_expired())
    assert httpx.post(call, json=CHAT, timeout=30).status_code == 409  # superseded: refused, never forwarded

    spans = httpx.get(f"{url}/v1/agl/spans", params={"rollout_id": rollout_id}).json()
    assert spans["total"] == 1
    (span,) = spans["items"]
    assert span["attempt_id"] == first.attempt_id and span["sequence_id"] == 1
    assert span["attributes"]["path"] == "/v1/chat/completions" and span["attributes"]["status"] == 200
    assert span["attributes"]["backend"] and span["attributes"]["prompt_tokens"] == 2
    assert span["attributes"]["seconds"] > 0  # the call's time in the proxy, shown beside it

    summary = httpx.get(f"{url}/dashboard/summary").json()
    assert summary["proxy"]["forwarded"] == 1 and summary["proxy"]["refused_by_reason"] == {"superseded": 1}
    assert summary["proxy"]["added_latency_p50_ms"] is not None and "added_latency_buckets" not in summary["proxy"]
    assert summary["proxy"]["backends"] == {}  # the backends that failed, with their circuits: none here

    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("lightning_attempts_llm_proxy_forwarded_total", ())] == 1
    assert samples[("lightning_attempts_llm_proxy_refused_total", (("reason", "superseded"),))] == 1
    assert samples[("lightning_attempts_llm_proxy_added_latency_seconds_count", ())] == 1
    assert samples[("lightning_attempts_llm_proxy_added_latency_seconds_bucket", (("le", "+Inf"),))] == 1

    server.steps.add({"attempts/claims": 3.0, "attempts/requeues": 1.0})  # as verl's daemon does, once a step
    (step,) = httpx.get(f"{url}/dashboard/summary").json()["steps"]
    assert step["step"] == 1 and step["metrics"] == {"attempts/claims": 3.0, "attempts/requeues": 1.0}

    served.call(proxy.stop())
    assert server.llm_proxy_readout is None
    assert httpx.get(f"{url}/dashboard/summary").json()["proxy"] is None
