"""API keys: every route of a keyed server answers 401 without the key; the shim sends it; refusals change nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

import lightning_attempts
from lightning_attempts import AttemptAwareClient, AttemptAwareServer
from lightning_attempts.auth import MAX_FIRST_LINES, ApiKeyMiddleware
from lightning_attempts.compat import AgentLightningClient, LegacyRollout
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from ..upstream import RESOURCES, StragglerAgent, make_runner

Served = ServerThread[AttemptAwareServer]
KEY = "s3cret-Key_0123456789"
WRONG = "not-the-key-9876"
REFUSED = {"no key": {}, "wrong key": {"x-api-key": WRONG}, "wrong bearer": {"Authorization": f"Bearer {WRONG}"}}
ACCEPTED = {"bearer": {"Authorization": f"Bearer {KEY}"}, "x-api-key": {"x-api-key": KEY}}


@pytest.fixture
def keyed(clock: ManualClock) -> Iterator[Served]:
    server = AttemptAwareServer(port=0, task_timeout_seconds=60, unresponsive_seconds=30, api_key=KEY, clock=clock)
    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        yield served


def state(server: AttemptAwareServer) -> dict[str, Any]:
    """Everything a refused request must leave as it was (the refusal counter aside)."""
    stats = {k: v for k, v in server.attempt_stats().items() if k != "unauthorized"}
    store = server.store
    return {
        "stats": stats,
        "queue": list(store._book.queue),  # pyright: ignore[reportPrivateUsage]
        "stored": sorted(store._completed_rollouts),  # pyright: ignore[reportPrivateUsage]
        "claims": {rid: server.attempt_history(rid) for rid in store._book.claimed},  # pyright: ignore[reportPrivateUsage]
    }


def requests_for_every_route(served: Served) -> list[tuple[str, str, dict[str, Any] | None]]:
    """One request per route and method the app has, path parameters filled in; and an unknown path."""
    requests: list[tuple[str, str, dict[str, Any] | None]] = [("GET", "/no/such/route", None)]
    for route in served.server._app.routes:  # pyright: ignore[reportPrivateUsage]
        if isinstance(route, (APIRoute, Route)):
            path = route.path.replace("{", "").replace("}", "")
            for method in sorted(route.methods or ()):
                requests.append((method, path, {"rollout_id": "r", "attempt_id": "a"} if method == "POST" else None))
    return requests


def test_every_route_answers_401_without_the_key(keyed: Served, caplog: pytest.LogCaptureFixture) -> None:
    served = keyed
    served.call(served.server.queue_task("x"))
    requests = requests_for_every_route(served)
    paths = {path for _, path, _ in requests}
    assert {"/task", "/rollout", "/heartbeat", "/resources/latest", "/attempts/stats", "/metrics"} <= paths
    assert {"/docs", "/openapi.json", "/attempts/rollout_id", "/resources/resource_id"} <= paths
    before = state(served.server)
    caplog.set_level(logging.WARNING, logger="lightning_attempts.auth")
    with httpx.Client(base_url=served.endpoint, timeout=10) as http:
        for method, path, body in requests:
            for name, headers in REFUSED.items():
                response = http.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, name)
                assert response.headers["www-authenticate"] == "Bearer"
                if method != "HEAD":
                    assert response.json() == {"detail": "Invalid or missing API key"}
        assert state(served.server) == before
        for method, path, body in requests:
            for name, headers in ACCEPTED.items():
                response = http.request(method, path, json=body, headers=headers)
                assert response.status_code != 401, (method, path, name)
                assert response.status_code < 500, (method, path, name, response.text[:200])
    refusals = [r for r in caplog.records if r.name == "lightning_attempts.auth"]
    # Once per peer and route, at most MAX_FIRST_LINES a minute; the rest are summarised later.
    assert len(refusals) == min(len(requests), MAX_FIRST_LINES)
    assert all(r.levelno == logging.WARNING for r in refusals)
    assert "Refused GET '/no/such/route' from 127.0.0.1: no API key (401)" in caplog.text
    assert KEY not in caplog.text and WRONG not in caplog.text  # what was presented is never logged


def test_an_old_worker_polling_a_keyed_server_is_logged_once(keyed: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lightning_attempts.auth")
    with httpx.Client(base_url=keyed.endpoint, timeout=10) as http:
        for _ in range(20):  # new connections, new ports: still one peer
            assert http.get("/task", headers={"connection": "close"}).status_code == 401
    refusals = [r.getMessage() for r in caplog.records if r.name == "lightning_attempts.auth"]
    assert len(refusals) == 1 and refusals[0].startswith("Refused GET '/task' from 127.0.0.1: no API key"), refusals
    assert keyed.server.attempt_stats()["unauthorized"] == 20  # every refusal still counted


def test_the_key_in_either_header_serves_each_route_as_usual(keyed: Served) -> None:
    served = keyed
    for name, headers in ACCEPTED.items():
        rid = served.call(served.server.queue_task(name))
        with httpx.Client(base_url=served.endpoint, timeout=10, headers=headers) as http:
            task = http.get("/task").json()["task"]
            assert task["rollout_id"] == rid
            beat = http.post("/heartbeat", json={"rollout_id": rid, "attempt_id": task["attempt_id"]})
            assert beat.json()["status"] == "ok"
            resources = http.get("/resources/latest").json()
            assert http.get(f"/resources/{resources['resources_id']}").status_code == 200
            assert http.get(f"/attempts/{rid}").json()[0]["attempt_id"] == task["attempt_id"]
            answer = http.post("/rollout", json={"rollout_id": rid, "attempt_id": task["attempt_id"]})
            assert (answer.status_code, answer.json()["status"]) == (200, "ok")
            assert http.get("/attempts/stats").json()["accepted"] >= 1
            assert "lightning_attempts_unauthorized_total" in http.get("/metrics").text
            assert http.get("/openapi.json").json()["paths"]["/task"]
            assert http.get("/docs").status_code == 200


def test_a_refused_submission_changes_nothing_but_the_refusal_counter(keyed: Served) -> None:
    served = keyed
    rid = served.call(served.server.queue_task("x"))
    with httpx.Client(base_url=served.endpoint, timeout=10, headers=ACCEPTED["bearer"]) as http:
        task = http.get("/task").json()["task"]
    body = {"rollout_id": rid, "attempt_id": task["attempt_id"], "final_reward": 0.0}
    before = state(served.server)
    with httpx.Client(base_url=served.endpoint, timeout=10) as http:
        for headers in REFUSED.values():
            assert http.post("/rollout", json=body, headers=headers).status_code == 401
            assert http.post("/heartbeat", json=body, headers=headers).status_code == 401
            assert http.get("/task", headers=headers).status_code == 401
    assert state(served.server) == before
    assert served.server.attempt_stats()["unauthorized"] == 3 * len(REFUSED)
    with httpx.Client(base_url=served.endpoint, timeout=10, headers=ACCEPTED["x-api-key"]) as http:
        assert http.get("/attempts/stats").json()["unauthorized"] == 3 * len(REFUSED)
        assert "lightning_attempts_unauthorized_total 9.0" in http.get("/metrics").text
        assert http.post("/rollout", json=body).json()["status"] == "ok"  # the claim was untouched


def test_an_open_server_has_no_middleware_in_its_path() -> None:
    """Without a key nothing is added per request; with one, a single middleware around everything."""
    assert AttemptAwareServer(port=0)._app.user_middleware == []  # pyright: ignore[reportPrivateUsage]
    keyed = AttemptAwareServer(port=0, api_key=KEY)._app.user_middleware  # pyright: ignore[reportPrivateUsage]
    assert [m.cls for m in keyed] == [ApiKeyMiddleware]


def test_a_key_that_cannot_travel_in_a_header_is_refused() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        AttemptAwareServer(port=0, api_key="has space")
    assert not AttemptAwareServer(port=0, api_key="").requires_key  # empty means none, as 1.0 reads AGL_KEY


# -- the start warning ---------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "api_key", "warned"),
    [("0.0.0.0", None, True), ("0.0.0.0", KEY, False), ("127.0.0.1", None, False), ("localhost", None, False)],
)
def test_an_open_server_beyond_loopback_warns_once_at_start(
    host: str, api_key: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lightning_attempts.server")
    with serve_in_thread(AttemptAwareServer(host=host, port=0, api_key=api_key)):
        pass
    warnings = [r.getMessage() for r in caplog.records if "No API key set" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert "AGL_KEY" in warnings[0] and "api_key" in warnings[0] and "0.0.0.0" in warnings[0]


# -- the client ------------------------------------------------------------------


def submit(client: AgentLightningClient, task: Any, reward: float = 1.0) -> dict[str, Any] | None:
    return client.post_rollout(LegacyRollout(rollout_id=task.rollout_id, final_reward=reward))


def test_the_shim_sends_agl_key_on_every_request(
    keyed: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    served = keyed
    monkeypatch.setenv("AGL_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    client = AttemptAwareClient(served.endpoint, poll_interval=0.01)
    rid = served.call(served.server.queue_task("x"))
    assert client.get_latest_resources() is not None  # first: without the key, a poll would wait forever
    task = client.poll_next_task()
    assert task is not None and task.rollout_id == rid
    assert client.beat(client.open_claims()[0])
    answer = submit(client, task)
    assert answer is not None and answer["status"] == "ok"
    stats = served.server.attempt_stats()
    assert (stats["heartbeats"], stats["accepted"], stats["unauthorized"]) == (1, 1, 0)
    client.close()
    assert KEY not in caplog.text


async def test_the_async_shim_sends_agl_key(keyed: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    served = keyed
    monkeypatch.setenv("AGL_KEY", KEY)
    client = AttemptAwareClient(served.endpoint, poll_interval=0.01)
    served.call(served.server.queue_task("x"))
    assert await client.get_latest_resources_async() is not None  # first: without the key a poll waits forever
    task = await client.poll_next_task_async()
    assert task is not None
    assert await client.beat_async(client.open_claims()[0])
    answer = await client.post_rollout_async(LegacyRollout(rollout_id=task.rollout_id, final_reward=1.0))
    assert answer is not None and answer["status"] == "ok"
    assert served.server.attempt_stats()["unauthorized"] == 0
    await client.aclose()


def test_the_explicit_key_wins_over_agl_key(keyed: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    served = keyed
    served.call(served.server.queue_task("x"))
    monkeypatch.setenv("AGL_KEY", WRONG)
    right = AttemptAwareClient(served.endpoint, api_key=KEY)  # reaches the server although AGL_KEY is wrong
    assert right._request_json(served.endpoint + "/task") is not None  # pyright: ignore[reportPrivateUsage]
    monkeypatch.setenv("AGL_KEY", KEY)
    none = AttemptAwareClient(served.endpoint, api_key="")  # "" sends no key, whatever AGL_KEY says
    assert none._request_json(served.endpoint + "/task") is None  # pyright: ignore[reportPrivateUsage]
    assert served.server.attempt_stats()["unauthorized"] == 1
    right.close()
    none.close()


def test_a_client_without_the_key_says_so_once(keyed: Served, caplog: pytest.LogCaptureFixture) -> None:
    client = AttemptAwareClient(keyed.endpoint, api_key="")
    caplog.set_level(logging.WARNING, logger="lightning_attempts.client")
    for _ in range(3):
        assert client.get_latest_resources() is None
    refused = [r.getMessage() for r in caplog.records if "refused this client (401)" in r.getMessage()]
    assert refused == [
        f"Server {keyed.endpoint} refused this client (401): no API key. Set AGL_KEY (or api_key=...) "
        "to the server's key."
    ]
    client.close()


def test_an_old_client_gets_401s_and_its_result_is_not_taken(keyed: Served) -> None:
    """The upstream client cannot send a key: it claims nothing, and a result it posts is not stored."""
    served = keyed
    rid = served.call(served.server.queue_task("x"))
    old = AgentLightningClient(served.endpoint, poll_interval=0.01)
    assert old._request_json(served.endpoint + "/task") is None  # pyright: ignore[reportPrivateUsage]
    assert old.get_latest_resources() is None
    shim = AttemptAwareClient(served.endpoint, api_key=KEY, poll_interval=0.01)
    assert shim.get_latest_resources() is not None
    task = shim.poll_next_task()
    assert task is not None and task.rollout_id == rid
    assert submit(old, task, reward=0.0) is None  # 401: upstream's client returns None
    assert served.server.attempt_stats()["accepted_unverified"] == 0
    answer = submit(shim, task)
    assert answer is not None and answer["status"] == "ok"
    stored = served.call(served.server.retrieve_completed_rollouts())
    assert [(r.rollout_id, r.final_reward) for r in stored] == [(rid, 1.0)]
    assert served.server.attempt_stats()["unauthorized"] == 3
    shim.close()


def test_the_upstream_runner_with_the_shim_completes_tasks_on_a_keyed_server(
    keyed: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = keyed
    monkeypatch.setenv("AGL_KEY", KEY)
    rid = served.call(served.server.queue_task({"i": 1}, mode="train"))
    client = AttemptAwareClient(served.endpoint, poll_interval=0.01)
    assert client.get_latest_resources() is not None  # first: without the key the runner would poll forever
    agent = StragglerAgent(expire=lambda: None, stale_posted=lambda _: True)
    make_runner(agent, client, worker_id=0).run()
    rollout = served.call(served.server.poll_completed_rollout(rid, timeout=10))
    assert rollout is not None and rollout.final_reward == 1.0
    assert served.server.attempt_stats()["unauthorized"] == 0
    client.close()


# -- install() -------------------------------------------------------------------


@pytest.fixture
def installed() -> Iterator[None]:
    yield
    lightning_attempts.uninstall()


def test_install_passes_the_key_to_servers_agentlightning_builds(
    installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agentlightning.server

    monkeypatch.delenv("AGL_KEY", raising=False)
    lightning_attempts.install(api_key=KEY)
    assert agentlightning.server.AgentLightningServer(port=0).requires_key  # type: ignore[attr-defined]
    lightning_attempts.install()
    assert not agentlightning.server.AgentLightningServer(port=0).requires_key  # type: ignore[attr-defined]
    monkeypatch.setenv("AGL_KEY", KEY)  # read when the server is built (e.g. in verl's Ray actor)
    built = agentlightning.server.AgentLightningServer(port=0)
    assert built.requires_key  # type: ignore[attr-defined]
    assert not AttemptAwareServer(port=0).requires_key  # built directly, the server stays open
    lightning_attempts.install(api_key=None)  # an explicit option wins over AGL_KEY
    assert not agentlightning.server.AgentLightningServer(port=0).requires_key  # type: ignore[attr-defined]


def test_an_installed_server_reads_agl_key_and_installed_clients_send_it(
    installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agentlightning.client
    import agentlightning.server

    monkeypatch.setenv("AGL_KEY", KEY)
    lightning_attempts.install()
    server = agentlightning.server.AgentLightningServer(port=0)
    with serve_in_thread(server) as served:
        rid = served.call(server.queue_task("x"))
        client = agentlightning.client.AgentLightningClient(served.endpoint, poll_interval=0.01)
        assert client._request_json(served.endpoint + "/attempts/stats") is not None  # pyright: ignore[reportPrivateUsage]
        task = client.poll_next_task()
        assert task is not None and task.rollout_id == rid
        answer = submit(client, task)
        assert answer is not None and answer["status"] == "ok"
        assert server.attempt_stats()["accepted"] == 1  # type: ignore[attr-defined]
        assert httpx.get(served.endpoint + "/task").status_code == 401
        client.close()  # type: ignore[attr-defined]
