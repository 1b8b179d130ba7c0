"""The daemon's LLM proxy beside a real server, without verl: liveness from the store, the stored attempt's calls only.

``AttachedProxy`` is what ``AttemptAwareDaemon`` starts in place of upstream's Flask proxy; here it
serves on the server's loop (a thread of its own, as in the daemon) in front of a stand-in vLLM.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import httpx
import pytest

from lightning_attempts import AttemptAwareServer, AttemptRollout
from lightning_attempts.llm_proxy import AttachedProxy
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from ..llm_proxy.stand_in_vllm import StandInVllm, response_ids

KEY = "daemon-key-0123456789"
TIMEOUT = 10.0
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def running(clock: ManualClock) -> Iterator[tuple[ServerThread[AttemptAwareServer], AttachedProxy, StandInVllm]]:
    server = AttemptAwareServer(port=0, task_timeout_seconds=TIMEOUT, clock=clock, api_key=KEY)
    with serve_in_thread(server) as served:
        backend = StandInVllm("alpha")
        served.call(backend.start())
        proxy = AttachedProxy(server, lambda: [backend.address], free_port(), TIMEOUT)
        served.call(proxy.start())
        try:
            yield served, proxy, backend
        finally:
            served.call(backend.stop())


def claim(served: ServerThread[AttemptAwareServer]) -> tuple[str, str]:
    task = served.run(lambda: served.server.store.claim())
    assert task is not None and task.attempt_id is not None
    return task.rollout_id, task.attempt_id


def attempt_url(proxy: AttachedProxy, attempt: tuple[str, str]) -> str:
    return f"http://127.0.0.1:{proxy.port}/rollout/{attempt[0]}/attempt/{attempt[1]}/v1/chat/completions"


def test_a_reclaimed_straggler_is_refused_and_only_the_stored_attempts_calls_are_kept(
    running: tuple[ServerThread[AttemptAwareServer], AttachedProxy, StandInVllm], clock: ManualClock
) -> None:
    served, proxy, backend = running
    server = served.server
    assert server.llm_proxy_port == proxy.port
    rollout_id = served.call(server.queue_task({"n": 1}))
    with httpx.Client(timeout=30) as http:
        task = http.get(f"{server.endpoint}/task", headers={"x-api-key": KEY}).json()["task"]
        assert task["llm_proxy_port"] == proxy.port  # what the shim scopes its agent's endpoint by
        straggler = (rollout_id, str(task["attempt_id"]))
        assert http.post(attempt_url(proxy, straggler), json=CHAT).status_code == 200  # live: forwarded, recorded
        clock.advance(TIMEOUT + 1)
        served.run(lambda: server.store.requeue_expired())
        live = claim(served)
        refused = http.post(attempt_url(proxy, straggler), json=CHAT)
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "superseded")
        assert len(backend.received) == 1  # the refused call never reached it
        ok = {**CHAT, "messages": [{"role": "user", "content": "ok"}]}
        assert http.post(attempt_url(proxy, live), json=ok).status_code == 200
        assert served.run(lambda: proxy.stored_calls([rollout_id])) == {}  # no result stored yet
        result = AttemptRollout(rollout_id=rollout_id, attempt_id=live[1], final_reward=1.0)
        assert served.run(lambda: server.store.submit(result, live[1])).status == "ok"
        (calls,) = served.run(lambda: proxy.stored_calls([rollout_id, "unknown"])).values()
        assert [(list(c.prompt_token_ids or ()), [list(r) for r in c.response_token_ids or ()]) for c in calls] == [
            ([ord("o"), ord("k")], [response_ids("alpha")])  # the live attempt's call, not the straggler's
        ]
        plain = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
        assert http.post(plain, json=CHAT).status_code == 401  # the server's key keys the proxy too
        assert http.post(plain, json=CHAT, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        stats = served.run(proxy.stats)
        assert (stats["forwarded"], stats["refused_not_live"], stats["refused"]) == (3, 1, 2)
        served.run(proxy.forget)
        assert served.run(lambda: proxy.stored_calls([rollout_id])) == {}


def test_it_stops_when_the_server_stops(clock: ManualClock) -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=TIMEOUT, clock=clock)
    with serve_in_thread(server) as served:
        proxy = AttachedProxy(server, lambda: [], free_port(), TIMEOUT)
        served.call(proxy.start())
        url = f"http://127.0.0.1:{proxy.port}/v1/models"
        assert httpx.get(url).status_code == 503  # serving; no backend yet
    assert server.llm_proxy_port is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


def test_the_refusals_of_a_step_are_logged_when_it_ends(
    running: tuple[ServerThread[AttemptAwareServer], AttachedProxy, StandInVllm], caplog: pytest.LogCaptureFixture
) -> None:
    served, proxy, _ = running
    with httpx.Client(timeout=30) as http, caplog.at_level(logging.WARNING):
        assert http.post(attempt_url(proxy, ("rollout-x", "made-up")), json=CHAT).status_code == 409
        assert not caplog.records  # the summary is due a minute later
        served.run(proxy.log_refusals)  # what the daemon calls as it takes a step's metrics
    assert [r.getMessage() for r in caplog.records] == [
        "LLM proxy refused 1 call(s) in the last 60s: unknown_rollout x1"
    ]
