"""What the server offers an attempt-aware LLM proxy beside it (verl's daemon's): the port in each task handed out,
its attempts' liveness, and a stop when the server stops."""

from __future__ import annotations

import asyncio

import httpx

from lightning_attempts import AttemptAwareServer
from lightning_attempts.testing import ServerThread, serve_in_thread


def test_tasks_name_the_proxys_port_once_it_is_set(served: ServerThread[AttemptAwareServer]) -> None:
    server = served.server
    for _ in range(3):
        served.call(server.queue_task({"n": 1}))
    with httpx.Client(base_url=served.endpoint) as client:
        assert client.get("/task").json()["task"]["llm_proxy_port"] is None  # no proxy: old clients see null
        server.llm_proxy_port = 41234
        assert client.get("/task").json()["task"]["llm_proxy_port"] == 41234
        assert client.get("/task", params={"wait": 1}).json()["task"]["llm_proxy_port"] == 41234  # a long poll too


def test_liveness_is_the_stores_and_says_when_the_server_is_stopped() -> None:
    with serve_in_thread(AttemptAwareServer(port=0)) as served:
        server = served.server
        served.call(server.queue_task({"n": 1}))
        task = served.run(lambda: server.store.claim())
        assert task is not None and task.attempt_id is not None
        attempt = (task.rollout_id, task.attempt_id)
        assert served.run(lambda: server.liveness(*attempt)) is None
        assert served.run(lambda: server.liveness(task.rollout_id, "never-issued")) == "unknown_attempt"
        served.call(server.stop())
        assert served.run(lambda: server.liveness(*attempt)) == "server_stopped"


def test_what_stops_with_the_server_is_stopped_after_it() -> None:
    stopped: list[bool] = []
    server = AttemptAwareServer(port=0)

    async def stop() -> None:
        await asyncio.sleep(0)
        stopped.append(server.startup_event.is_set())  # the server is down by then

    server.stop_with_server(stop)
    with serve_in_thread(server):
        assert stopped == []
    assert stopped == [False]
