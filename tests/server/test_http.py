"""AttemptAwareServer on a real uvicorn server on loopback, driven by raw HTTP and the upstream client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import typing
import uuid
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from agentlightning.types import PromptTemplate

from lightning_attempts import AttemptAwareServer, ServerStartError
from lightning_attempts.compat import AgentLightningClient, LegacyRollout
from lightning_attempts.options import OptionArguments, Options, ServerArguments
from lightning_attempts.server import DirectRoute
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

Served = ServerThread[AttemptAwareServer]


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.endpoint, timeout=10) as client:
        yield client


def queue(served: Served, sample: Any = "x") -> str:
    return served.call(served.server.queue_task(sample))


def claim(http: httpx.Client) -> dict[str, Any]:
    body = http.get("/task").json()
    assert body["is_available"], body
    return body["task"]


def post(http: httpx.Client, rollout_id: str, attempt_id: str | None, **fields: Any) -> httpx.Response:
    return http.post("/rollout", json={"rollout_id": rollout_id, "attempt_id": attempt_id, **fields})


def stored(served: Served) -> list[Any]:
    return served.call(served.server.retrieve_completed_rollouts())


def test_task_carries_the_attempt(served: Served, http: httpx.Client) -> None:
    rid = queue(served, {"question": 1})
    task = claim(http)
    assert task["rollout_id"] == rid
    assert uuid.UUID(task["attempt_id"]).version == 4
    assert task["claim_sequence_id"] == task["num_claims"] == 1
    assert task["input"] == {"question": 1}
    assert http.get("/task").json() == {"is_available": False, "task": None}


def test_answers_for_each_outcome(served: Served, http: httpx.Client, clock: ManualClock) -> None:
    rid = queue(served)
    early = claim(http)
    clock.advance(61)
    late = claim(http)
    assert late["claim_sequence_id"] == 2

    dropped = post(http, rid, early["attempt_id"], final_reward=0.0)
    assert dropped.status_code == 409
    assert dropped.json() | {"message": ""} == {
        "status": "dropped",
        "reason": "superseded",
        "message": "",
        "rollout_id": rid,
        "attempt_id": early["attempt_id"],
        "claim_sequence_id": 1,
        "current_claim_sequence_id": 2,
    }
    assert late["attempt_id"] not in dropped.text  # the live attempt's id lets its holder call the LLM proxy
    accepted = post(http, rid, late["attempt_id"], final_reward=1.0)
    assert (accepted.status_code, accepted.json()["status"]) == (200, "ok")
    retry = post(http, rid, late["attempt_id"], final_reward=1.0)
    assert (retry.status_code, retry.json()["status"]) == (200, "duplicate")
    unknown = post(http, "rollout-unknown", late["attempt_id"])
    assert (unknown.status_code, unknown.json()["reason"]) == (409, "unknown_rollout")

    [rollout] = stored(served)
    assert (rollout.rollout_id, rollout.final_reward, rollout.attempt_id) == (rid, 1.0, late["attempt_id"])
    stats = http.get("/attempts/stats").json()
    assert stats == served.server.attempt_stats()
    assert (stats["claims"], stats["requeues"], stats["accepted"], stats["duplicates"]) == (2, 1, 1, 1)
    assert stats["dropped"]["superseded"] == stats["dropped"]["unknown_rollout"] == 1


def test_a_claim_names_its_worker_in_its_history(served: Served, http: httpx.Client, clock: ManualClock) -> None:
    """The shim names itself on GET /task; an old client is known by its address, as a release names its worker."""
    rid = queue(served)
    http.get("/task", params={"worker": "node-1:4242"})
    clock.advance(61)
    http.get("/task")
    history = http.get(f"/attempts/{rid}").json()
    assert [entry["worker"] for entry in history] == ["node-1:4242 at 127.0.0.1", "127.0.0.1"]
    too_long = http.get("/task", params={"worker": "w" * 257})
    assert (too_long.status_code, too_long.json()["detail"][0]["loc"]) == (422, ["query", "worker"])


def test_unmodified_upstream_client(served: Served, clock: ManualClock) -> None:
    client = AgentLightningClient(endpoint=served.endpoint, poll_interval=0.05, timeout=5)
    # (Upstream answers 404 for an empty resources dict, so give it one resource.)
    resources_id = served.call(
        served.server.update_resources({"prompt": PromptTemplate(template="hi", engine="f-string")})
    )
    rid = queue(served, {"q": 1})
    task = client.poll_next_task()
    assert task is not None and task.rollout_id == rid and task.num_claims == 1
    assert client.get_resources_by_id(resources_id) is not None
    latest = client.get_latest_resources()
    assert latest is not None and latest.resources_id == resources_id
    # An old client sends no attempt id: accepted while its claim is live.
    response = client.post_rollout(client_rollout(rid, 0.5))
    assert response is not None and response["status"] == "ok"
    [rollout] = stored(served)
    assert (rollout.rollout_id, rollout.final_reward) == (rid, 0.5)

    # Its late result for a requeued task is refused with 409, which upstream turns into None.
    rid = queue(served)
    assert client.poll_next_task() is not None
    queue(served)
    clock.advance(61)
    assert httpx.get(served.endpoint + "/task").json()["task"]["rollout_id"] != rid  # requeued behind the other
    assert client.post_rollout(client_rollout(rid, 0.0)) is None
    assert stored(served) == []
    assert served.server.attempt_stats()["dropped"]["superseded"] == 1


def test_unmodified_upstream_async_client(served: Served) -> None:
    client = AgentLightningClient(endpoint=served.endpoint, poll_interval=0.05, timeout=5)
    rid = queue(served)

    async def work() -> dict[str, Any] | None:
        task = await client.poll_next_task_async()
        assert task is not None and task.rollout_id == rid
        return await client.post_rollout_async(client_rollout(rid, 1.0))

    response = asyncio.run(work())
    assert response is not None and response["status"] == "ok"
    assert [r.rollout_id for r in stored(served)] == [rid]


def client_rollout(rollout_id: str, reward: float) -> Any:
    return LegacyRollout(rollout_id=rollout_id, final_reward=reward)


def test_resources_endpoints_unchanged(http: httpx.Client) -> None:
    latest = http.get("/resources/latest")
    assert (latest.status_code, latest.json()) == (404, {"detail": "No resources have been set on the server."})
    missing = http.get("/resources/res-nope")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Resource ID 'res-nope' not found."})


MALFORMED: dict[str, dict[str, Any]] = {
    "not JSON": {"content": b"{this is not json", "headers": {"content-type": "application/json"}},
    "not an object": {"json": ["rollout-1"]},
    "missing rollout_id": {"json": {"attempt_id": "a", "final_reward": 1.0}},
    "wrong type of rollout_id": {"json": {"rollout_id": 12, "attempt_id": "a"}},
    "wrong type of final_reward": {"json": {"rollout_id": "R", "final_reward": "high"}},
    "wrong type of attempt_id": {"json": {"rollout_id": "R", "attempt_id": ["a"]}},
    "megabyte attempt_id": {"json": {"rollout_id": "R", "attempt_id": "a" * 1_000_000}},
    "megabyte rollout_id": {"json": {"rollout_id": "r" * 1_000_000}},
    "empty attempt_id": {"json": {"rollout_id": "R", "attempt_id": ""}},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_submissions_are_refused_and_change_nothing(served: Served, http: httpx.Client, case: str) -> None:
    rid = queue(served)
    task = claim(http)
    before = served.server.attempt_stats()
    request = dict(MALFORMED[case])
    body = request.get("json")
    if isinstance(body, dict):  # "R" stands for the queued task's rollout id
        request["json"] = {key: rid if value == "R" else value for key, value in cast(dict[str, Any], body).items()}
    response = http.post("/rollout", **request)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail and all(error["msg"] for error in detail)  # says what is wrong
    assert served.server.attempt_stats() == before
    # Still serving, and the claim is intact.
    assert post(http, rid, task["attempt_id"]).json()["status"] == "ok"


def test_malformed_message_names_the_field(http: httpx.Client) -> None:
    response = http.post("/rollout", json={"rollout_id": "r", "attempt_id": "a" * 1_000_000})
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "attempt_id"]
    assert "at most 256 characters" in error["msg"]
    assert len(response.content) < 10_000  # the answer does not echo the megabyte back


LIMIT = 4096


@pytest.fixture
def limited(clock: ManualClock) -> Iterator[Served]:
    with serve_in_thread(AttemptAwareServer(port=0, task_timeout_seconds=60, max_body_bytes=LIMIT, clock=clock)) as s:
        yield s


def padded(rollout_id: str, attempt_id: str, size: int) -> bytes:
    """A valid submission of exactly ``size`` bytes (the padding is in its metadata)."""
    body = {"rollout_id": rollout_id, "attempt_id": attempt_id, "metadata": {"pad": ""}}
    bare = len(json.dumps(body).encode())
    body["metadata"] = {"pad": "x" * (size - bare)}
    encoded = json.dumps(body).encode()
    assert len(encoded) == size
    return encoded


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused(limited: Served, chunked: bool) -> None:
    rid = queue(limited)
    with httpx.Client(base_url=limited.endpoint, timeout=10) as http:
        task = claim(http)
        before = limited.server.attempt_stats()
        oversized = padded(rid, task["attempt_id"], 1_000_000)
        content: Any = iter([oversized[i : i + 8192] for i in range(0, len(oversized), 8192)]) if chunked else oversized
        response = http.post("/rollout", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert f"larger than {LIMIT} bytes" in response.json()["detail"]
        assert limited.server.attempt_stats() == before
        # Still serving, the claim intact; a body of exactly the limit is read.
        answer = http.post("/rollout", content=padded(rid, task["attempt_id"], LIMIT))
        assert (answer.status_code, answer.json()["status"]) == (200, "ok")
    assert [r.rollout_id for r in stored(limited)] == [rid]


@pytest.mark.parametrize(("option", "limit"), [({}, 64 * 2**20), ({"max_body_bytes": None}, None)])
def test_the_body_limit_reaches_the_routes_that_read_bodies(option: dict[str, Any], limit: int | None) -> None:
    app = AttemptAwareServer(port=0, producer_api=True, **option)._app  # pyright: ignore[reportPrivateUsage]
    limits = {route.path: route.max_body_bytes for route in app.routes if isinstance(route, DirectRoute)}
    producer = ["/tasks", "/tasks/cancel", "/resources", "/rollouts/take", "/rollouts/wait"]
    assert limits == dict.fromkeys(["/task", "/rollout", "/heartbeat", "/release", *producer], limit)


def test_the_body_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        AttemptAwareServer(port=0, max_body_bytes=0)


@pytest.mark.parametrize(
    "option",
    [{"max_claims": 0}, {"unresponsive_seconds": 0}, {"max_remembered": -1}, {"retry_failed": -1}],
)
def test_a_store_option_out_of_range_fails_when_the_server_is_built_not_when_it_starts(option: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(option))):
        AttemptAwareServer(port=0, **option)


def test_the_keyword_options_are_the_fields_of_options() -> None:
    """``ServerArguments`` types the server's keywords: the fields of ``Options`` but upstream's third argument."""
    fields = {f.name: f.type for f in dataclasses.fields(Options)}
    assert list(OptionArguments.__annotations__) == [*ServerArguments.__annotations__, "task_timeout_seconds"]
    assert set(OptionArguments.__annotations__) == set(fields)
    hints, option_hints = typing.get_type_hints(OptionArguments), typing.get_type_hints(Options)
    assert all(hints[name] == option_hints[name] for name in fields)
    server = AttemptAwareServer(port=0, task_timeout_seconds=9, stale_policy="salvage", max_claims=3, api_key="")
    assert server.options == Options(task_timeout_seconds=9, stale_policy="salvage", max_claims=3)
    readable: Any = server  # each option is also an attribute, generated from the fields
    assert (readable.stale_policy, readable.max_claims, server.requires_key) == ("salvage", 3, False)
    with pytest.raises(AttributeError):  # options are fixed once the server is built
        readable.max_claims = 4


def test_openapi_documents_the_hot_routes(http: httpx.Client) -> None:
    """/task, /rollout and /heartbeat are served by DirectRoute; FastAPI still documents them."""
    paths = http.get("/openapi.json").json()["paths"]
    rollout_body = paths["/rollout"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert rollout_body["$ref"].endswith("/AttemptRollout")
    assert paths["/heartbeat"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Heartbeat"
    )
    task_answer = paths["/task"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert task_answer["$ref"].endswith("/AttemptTaskIfAny")
    assert set(paths["/rollout"]["post"]["responses"]) >= {"200", "400", "409", "413", "422"}


def test_a_body_that_is_not_json_names_the_body(http: httpx.Client) -> None:
    response = http.post("/rollout", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["type"], error["loc"][0]) == ("json_invalid", "body")


def test_require_attempt_id(clock: ManualClock) -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=60, require_attempt_id=True, clock=clock)
    with serve_in_thread(server) as served, httpx.Client(base_url=served.endpoint) as http:
        rid = queue(served)
        task = claim(http)
        refused = post(http, rid, None)
        assert refused.status_code == 400
        assert refused.json()["reason"] == "attempt_required"
        assert "attempt_id is required" in refused.json()["message"]
        assert post(http, rid, task["attempt_id"]).json()["status"] == "ok"


def test_submission_racing_a_requeue_is_accepted_or_requeued_never_both(served: Served, clock: ManualClock) -> None:
    """Fire the claim's result and a poll that requeues it at the same moment, many times."""

    async def race(client: httpx.AsyncClient) -> tuple[bool, bool]:
        rid = await asyncio.wrap_future(served.submit(served.server.queue_task("x")))
        first = (await client.get("/task")).json()["task"]
        clock.advance(61)  # the claim is now past its deadline; the next poll requeues it
        submitted, polled = await asyncio.gather(
            client.post("/rollout", json={"rollout_id": rid, "attempt_id": first["attempt_id"]}),
            client.get("/task"),
        )
        accepted = submitted.json()["status"] == "ok"
        reclaimed = polled.json()["is_available"]
        if reclaimed:
            second = polled.json()["task"]
            assert (second["rollout_id"], second["claim_sequence_id"]) == (rid, 2)
            post = await client.post("/rollout", json={"rollout_id": rid, "attempt_id": second["attempt_id"]})
            assert post.json()["status"] == "ok"
        else:
            assert submitted.status_code == 200
        return accepted, reclaimed

    async def run() -> list[tuple[bool, bool]]:
        async with httpx.AsyncClient(base_url=served.endpoint) as client:
            return [await race(client) for _ in range(40)]

    outcomes = asyncio.run(run())
    assert all(accepted != reclaimed for accepted, reclaimed in outcomes), outcomes
    stats = served.server.attempt_stats()
    assert stats["accepted"] == 40
    assert stats["accepted"] + stats["dropped"]["superseded"] == 40 + stats["requeues"]
    assert len(stored(served)) == 40


def test_start_raises_when_the_port_is_taken_before_uvicorn_says_anything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AttemptAwareServer(port=port)
        with pytest.raises(ServerStartError, match=f"127.0.0.1:{port}: .*in use"):
            asyncio.run(server.start())
    chatter = [(r.name, r.getMessage()) for r in caplog.records if r.name.startswith(("uvicorn", "agentlightning"))]
    assert chatter == []  # no "Started server process", "Application startup complete", lifespan lines
    assert not any("Starting server" in r.getMessage() for r in caplog.records)


def test_port_zero_reports_the_bound_port(clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lightning_attempts.server")
    with serve_in_thread(AttemptAwareServer(port=0, clock=clock)) as served:
        assert served.server.port != 0
        assert served.endpoint == f"http://127.0.0.1:{served.server.port}"
        assert httpx.get(served.endpoint + "/attempts/stats").status_code == 200
    starting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Starting server at")]
    assert starting == [f"Starting server at {served.endpoint}"]  # the bound port, not :0


def test_upstream_lifecycle_methods(served: Served, http: httpx.Client) -> None:
    server = served.server
    rid = queue(served)
    task = claim(http)
    assert served.call(server.get_completed_rollout(rid)) is None
    post(http, rid, task["attempt_id"], final_reward=0.25)
    rollout = served.call(server.poll_completed_rollout(rid, timeout=5))
    assert rollout is not None and rollout.final_reward == 0.25


def test_cancel_pending_fences_a_batch(served: Served, http: httpx.Client) -> None:
    claimed_rid = queue(served)
    task = claim(http)
    queued_rid = queue(served)
    assert sorted(served.call(served.server.cancel_pending())) == sorted([claimed_rid, queued_rid])
    late = post(http, claimed_rid, task["attempt_id"])
    assert (late.status_code, late.json()["reason"]) == (409, "cancelled")
    assert http.get("/task").json()["is_available"] is False


def test_methods_need_a_running_server() -> None:
    server = AttemptAwareServer(port=0)
    with pytest.raises(RuntimeError, match="not be running"):
        server.attempt_stats()
    with pytest.raises(RuntimeError):
        asyncio.run(server.queue_task("x"))
