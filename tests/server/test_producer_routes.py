"""The producer routes over real HTTP: each answer, bad input refused without a change, the key, the held wait."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from lightning_attempts import AttemptAwareServer
from lightning_attempts.producer_models import MAX_TASKS
from lightning_attempts.server import replays

from ..producing import LONG, Served, entered_waits, serving

PROMPT = {"resource_type": "prompt_template", "template": "Say hi to {name}.", "engine": "f-string"}
KEY = "producer-key-0123"


@pytest.fixture
def served() -> Iterator[Served]:
    with serving(max_poll_wait=LONG) as running:
        yield running


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.endpoint, timeout=LONG + 10) as client:
        yield client


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def queue(http: httpx.Client, *samples: Any, **fields: Any) -> list[str]:
    response = http.post("/tasks", json={"tasks": [{"sample": s, **fields} for s in samples]})
    assert response.status_code == 200, response.text
    return response.json()["rollout_ids"]


def publish(http: httpx.Client, template: str = "Say hi to {name}.") -> str:
    response = http.post("/resources", json={"resources": {"prompt": {**PROMPT, "template": template}}})
    assert response.status_code == 200, response.text
    return response.json()["resources_id"]


def complete(http: httpx.Client, reward: float = 1.0, size: int = 0) -> str:
    """Claim the next task and post its result (``size`` bytes of metadata on top); its rollout id."""
    task = http.get("/task").json()["task"]
    body = {"rollout_id": task["rollout_id"], "attempt_id": task["attempt_id"], "final_reward": reward}
    if size:
        body["metadata"] = {"blob": "x" * size}
    assert http.post("/rollout", json=body).json()["status"] == "ok"
    return task["rollout_id"]


def state(served: Served) -> dict[str, Any]:
    """What refused input must not change."""
    store = served.server.store
    return {
        "queued": list(store._book.queue),  # pyright: ignore[reportPrivateUsage]
        "claimed": sorted(store._book.claimed),  # pyright: ignore[reportPrivateUsage]
        "stored": sorted(store._completed_rollouts),  # pyright: ignore[reportPrivateUsage]
        "resources": dict(store._resource_versions),  # pyright: ignore[reportPrivateUsage]
        "latest": store._latest_resources_id,  # pyright: ignore[reportPrivateUsage]
    }


def errors(response: httpx.Response) -> list[tuple[Any, ...]]:
    """Where a 422 says each error is."""
    assert response.status_code == 422, response.text
    return [tuple(error["loc"]) for error in response.json()["detail"]]


def ids(rollouts: Iterable[dict[str, Any]]) -> list[str]:
    return [rollout["rollout_id"] for rollout in rollouts]


# -- queue and publish --------------------------------------------------------


def test_a_batch_is_queued_in_order_with_its_fields(served: Served, http: httpx.Client) -> None:
    resources_id = publish(http)
    rollout_ids = queue(http, {"name": "Ada"}, 2, mode="val", resources_id=resources_id, metadata={"step": 3})
    assert len(set(rollout_ids)) == 2
    for rollout_id, sample in zip(rollout_ids, [{"name": "Ada"}, 2], strict=True):
        task = http.get("/task").json()["task"]
        assert (task["rollout_id"], task["input"], task["mode"]) == (rollout_id, sample, "val")
        assert (task["resources_id"], task["metadata"]) == (resources_id, {"step": 3})
    assert http.get(f"/resources/{resources_id}").json()["resources"]["prompt"]["template"] == PROMPT["template"]


def test_published_resources_become_the_latest(http: httpx.Client) -> None:
    first, second = publish(http, "one {name}"), publish(http, "two {name}")
    assert first != second
    latest = http.get("/resources/latest").json()
    assert (latest["resources_id"], latest["resources"]["prompt"]["template"]) == (second, "two {name}")
    assert http.get(f"/resources/{first}").json()["resources"]["prompt"]["template"] == "one {name}"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"tasks": []}, ("body", "tasks")),
        ({"task": [{"sample": 1}]}, ("body", "task")),
        ({"tasks": [{"sample": 1}, {"sample": 2, "mode": "training"}]}, ("body", "tasks", 1, "mode")),
        ({"tasks": [{"sample": 1, "resource_id": "r"}]}, ("body", "tasks", 0, "resource_id")),
        ({"tasks": [{"mode": "train"}]}, ("body", "tasks", 0, "sample")),
        ({"tasks": [{"sample": 1}, {"sample": 2, "resources_id": "res-nope"}]}, ("body", "tasks", 1, "resources_id")),
    ],
    ids=["empty", "misspelt", "bad-mode", "unknown-field", "no-sample", "unknown-resources"],
)
def test_a_bad_batch_queues_nothing_and_says_where(
    served: Served, http: httpx.Client, body: dict[str, Any], where: tuple[Any, ...]
) -> None:
    publish(http)
    queue(http, "already queued")
    before = state(served)
    assert where in errors(http.post("/tasks", json=body))
    assert state(served) == before


def test_a_batch_over_the_task_limit_is_refused_naming_it_before_it_is_parsed(
    served: Served, http: httpx.Client
) -> None:
    assert MAX_TASKS == 10_000
    queue(http, "already queued")
    before = state(served)
    over = json.dumps({"tasks": [{"sample": i} for i in range(MAX_TASKS + 1)]}).encode()
    for body in (over, over[:-2] + b", not JSON at all"):  # the rest of the list is not read
        refused = http.post("/tasks", content=body, headers={"content-type": "application/json"})
        assert errors(refused) == [("body", "tasks")]
        assert f"At most {MAX_TASKS} tasks per request" in refused.json()["detail"][0]["msg"]
    assert state(served) == before
    assert len(queue(http, *range(MAX_TASKS))) == MAX_TASKS
    schema = http.get("/openapi.json").json()["components"]["schemas"]["QueueTasks"]["properties"]["tasks"]
    assert schema["maxItems"] == MAX_TASKS and "10,000" in schema["description"]


@pytest.mark.parametrize(
    "resources",
    [{}, {"prompt": {"resource_type": "nonsense"}}, {"prompt": {**PROMPT, "engine": 3}}, []],
    ids=["empty", "unknown-type", "bad-field", "not-a-mapping"],
)
def test_bad_resources_are_refused_and_the_latest_stays(served: Served, http: httpx.Client, resources: Any) -> None:
    publish(http)
    before = state(served)
    assert errors(http.post("/resources", json={"resources": resources}))[0][:2] == ("body", "resources")
    assert state(served) == before


def test_a_repeated_request_id_answers_as_the_first_time_and_queues_once(served: Served, http: httpx.Client) -> None:
    body = {"tasks": [{"sample": "a"}, {"sample": "b"}], "request_id": "batch-1"}
    first = http.post("/tasks", json=body).json()
    assert http.post("/tasks", json=body).json() == first
    assert served.server.attempt_stats()["queued"] == 2
    assert http.post("/tasks", json={**body, "request_id": "batch-2"}).json() != first
    assert served.server.attempt_stats()["queued"] == 4
    published = {"resources": {"prompt": PROMPT}, "request_id": "publish-1"}
    resources_id = http.post("/resources", json=published).json()
    assert http.post("/resources", json=published).json() == resources_id
    assert len(state(served)["resources"]) == 1


# -- read and take --------------------------------------------------------------


def test_a_rollout_is_read_without_being_taken(served: Served, http: httpx.Client) -> None:
    (rollout_id,) = queue(http, "x")
    assert http.get(f"/rollouts/{rollout_id}").json() == {
        "rollout_id": rollout_id,
        "status": "pending",
        "rollout": None,
    }
    complete(http, reward=0.5)
    for _ in range(2):  # reading leaves it in place
        answer = http.get(f"/rollouts/{rollout_id}").json()
        assert (answer["status"], answer["rollout"]["final_reward"]) == ("stored", 0.5)
        assert answer["rollout"]["attempt_id"] == served.server.attempt_history(rollout_id)[-1]["attempt_id"]  # type: ignore[index]
    assert ids(http.post("/rollouts/take", json={"rollout_ids": None}).json()["rollouts"]) == [rollout_id]
    assert http.get(f"/rollouts/{rollout_id}").json()["status"] == "finished"
    missing = http.get("/rollouts/rollout-nope")
    assert missing.status_code == 404 and "rollout-nope" in missing.json()["detail"]


def test_take_given_ids_or_every_stored_one(served: Served, http: httpx.Client) -> None:
    rollout_ids = queue(http, 1, 2, 3, "pending")
    for _ in range(3):
        complete(http)
    taken = http.post("/rollouts/take", json={"rollout_ids": [rollout_ids[1], rollout_ids[3], "rollout-nope"]})
    assert ids(taken.json()["rollouts"]) == [rollout_ids[1]]  # the pending and the unknown one are skipped
    assert ids(http.post("/rollouts/take", json={"rollout_ids": None}).json()["rollouts"]) == [
        rollout_ids[0],
        rollout_ids[2],
    ]
    assert http.post("/rollouts/take", json={"rollout_ids": None}).json() == {"rollouts": []}
    assert state(served)["claimed"] == [] and state(served)["queued"] == [rollout_ids[3]]


@pytest.mark.parametrize(
    "body", [{}, {"rollout_id": None}, {"rollout_ids": None, "all": True}, {"rollout_ids": "r"}], ids=repr
)
def test_a_bad_take_takes_nothing(served: Served, http: httpx.Client, body: dict[str, Any]) -> None:
    queue(http, "x")
    complete(http)
    before = state(served)
    assert errors(http.post("/rollouts/take", json=body))
    assert state(served) == before


def test_a_repeated_take_gets_the_same_results_and_takes_no_more(served: Served, http: httpx.Client) -> None:
    """The answer to a take was lost: its retry must not come back empty-handed, nor take what came since."""
    first, second = queue(http, 1, 2)
    complete(http)
    body = {"rollout_ids": None, "request_id": "take-1"}
    taken = http.post("/rollouts/take", json=body).json()
    assert ids(taken["rollouts"]) == [first]
    complete(http)
    assert http.post("/rollouts/take", json=body).json() == taken
    assert state(served)["stored"] == [second]


def test_an_answer_over_the_byte_bound_is_not_kept_while_a_small_one_replays(
    served: Served, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept answers take at most REPLAY_BYTES in all (64 MiB; 1 MiB here): a larger one is not kept, and its
    repeat is refused (409) without taking anything, while a small answer kept before it still replays."""
    assert replays.REPLAY_BYTES == 64 * 2**20
    monkeypatch.setattr(replays, "REPLAY_BYTES", 2**20)
    small, big, later = queue(http, 1, 2, 3)
    complete(http)
    small_take = {"rollout_ids": [small], "request_id": "take-small"}
    first = http.post("/rollouts/take", json=small_take).json()
    complete(http, size=2**20)
    big_take = {"rollout_ids": None, "request_id": "take-big"}
    assert ids(http.post("/rollouts/take", json=big_take).json()["rollouts"]) == [big]
    complete(http)
    repeated = http.post("/rollouts/take", json=big_take)
    assert repeated.status_code == 409 and "'take-big' was answered already" in repeated.json()["detail"]
    assert state(served)["stored"] == [later]  # the repeat took nothing
    assert http.post("/rollouts/take", json=small_take).json() == first


def test_the_oldest_answers_are_dropped_to_stay_within_the_byte_bound(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replays, "REPLAY_BYTES", 2**20)
    queue(http, 1, 2, 3)
    answers: dict[str, Any] = {}
    for request_id in ("first", "second", "third"):  # 0.4 MiB each: the three do not fit in 1 MiB
        complete(http, size=4 * 2**20 // 10)
        answers[request_id] = http.post("/rollouts/take", json={"rollout_ids": None, "request_id": request_id})
    again = {
        request_id: http.post("/rollouts/take", json={"rollout_ids": None, "request_id": request_id})
        for request_id in answers
    }
    assert again["first"].status_code == 409
    assert [again[i].content for i in ("second", "third")] == [answers[i].content for i in ("second", "third")]


# -- wait -----------------------------------------------------------------------


def wait(http: httpx.Client, rollout_ids: list[str], timeout: float | None = LONG) -> httpx.Response:
    return http.post("/rollouts/wait", json={"rollout_ids": rollout_ids, "timeout": timeout})


def test_a_wait_is_held_until_the_last_result_is_stored(
    served: Served, http: httpx.Client, pool: ThreadPoolExecutor
) -> None:
    first, second = queue(http, 1, 2)
    entered = entered_waits(served)
    waiting: Future[httpx.Response] = pool.submit(wait, http, [first, second])
    complete(http, reward=0.25)
    assert entered.acquire(timeout=10)
    complete(http, reward=0.75)
    answer = waiting.result(timeout=10).json()  # long before LONG
    assert ([r["final_reward"] for r in answer["rollouts"]], answer["pending"]) == ([0.25, 0.75], [])
    assert answer["held"] == LONG
    assert state(served)["stored"] == sorted([first, second])  # left in place


def test_a_wait_answers_at_once_what_is_stored_and_pending(served: Served, http: httpx.Client) -> None:
    done, pending, cancelled = queue(http, 1, 2, 3)
    complete(http)
    http.post("/tasks/cancel", json={"rollout_ids": [cancelled]})
    answer = wait(http, [done, pending, cancelled, done], timeout=0).json()
    assert (ids(answer["rollouts"]), answer["pending"], answer["held"]) == ([done], [pending], 0)


def test_the_server_caps_the_wait_at_max_poll_wait() -> None:
    with serving(max_poll_wait=0.2) as served, httpx.Client(base_url=served.endpoint, timeout=LONG) as http:
        (rollout_id,) = queue(http, "never done")
        begun = time.monotonic()
        answer = wait(http, [rollout_id], timeout=LONG).json()
        assert time.monotonic() - begun < LONG / 2
        assert (answer["rollouts"], answer["pending"], answer["held"]) == ([], [rollout_id], 0.2)
        assert wait(http, [rollout_id], timeout=None).json()["held"] == 0.2


def test_a_wait_for_unknown_ids_is_refused_naming_them(served: Served, http: httpx.Client) -> None:
    (known,) = queue(http, 1)
    refused = wait(http, [known, "rollout-a", "rollout-b"])
    assert refused.status_code == 404 and refused.json()["unknown"] == ["rollout-a", "rollout-b"]
    assert errors(http.post("/rollouts/wait", json={"rollout_ids": [known], "timeout": -1})) == [("body", "timeout")]


def test_a_wait_whose_finished_task_is_forgotten_meanwhile_still_answers(served: Served, http: httpx.Client) -> None:
    """Between the route's check and the wait's start, a finished task may be forgotten (``max_remembered``)."""
    (rollout_id,) = queue(http, 1)

    async def forgotten(rollout_ids: Iterable[str], timeout: float | None = None) -> Any:
        raise ValueError("Rollout ID is neither live, stored nor remembered.")

    served.server.wait_for_rollouts = forgotten  # type: ignore[method-assign]
    answer = wait(http, [rollout_id])
    assert (answer.status_code, answer.json()["pending"]) == (200, [rollout_id])


def test_stopping_the_server_answers_a_held_wait_at_once(pool: ThreadPoolExecutor) -> None:
    """Shutdown waits for open requests: a held wait must not hold it for ``max_poll_wait``."""
    with serving(max_poll_wait=600.0) as served, httpx.Client(base_url=served.endpoint, timeout=LONG) as http:
        (rollout_id,) = queue(http, "never done")
        entered = entered_waits(served)
        waiting = pool.submit(wait, http, [rollout_id], 600.0)
        assert entered.acquire(timeout=10)
        begun = time.monotonic()
        served.call(served.server.stop(), timeout=LONG)
        assert time.monotonic() - begun < LONG / 2
        answer = waiting.result(timeout=10)
        assert (answer.status_code, answer.json()["pending"]) == (200, [rollout_id])


# -- cancel ---------------------------------------------------------------------


def test_cancel_given_ids_or_every_pending_one(served: Served, http: httpx.Client) -> None:
    done, claimed, queued, other = queue(http, 1, 2, 3, 4)
    complete(http)
    task = http.get("/task").json()["task"]
    assert task["rollout_id"] == claimed
    answer = http.post("/tasks/cancel", json={"rollout_ids": [claimed, done, "rollout-nope"]}).json()
    assert answer == {"cancelled": [claimed]}  # finished and unknown ids are skipped
    late = http.post("/rollout", json={"rollout_id": claimed, "attempt_id": task["attempt_id"], "final_reward": 1})
    assert (late.status_code, late.json()["reason"]) == (409, "cancelled")
    assert http.post("/tasks/cancel", json={"rollout_ids": None}).json() == {"cancelled": [queued, other]}
    assert state(served)["stored"] == [done]
    before = state(served)
    assert errors(http.post("/tasks/cancel", json={})) == [("body", "rollout_ids")]
    assert state(served) == before


def test_a_repeated_cancel_answers_as_the_first_time(served: Served, http: httpx.Client) -> None:
    """The answer to a cancel was lost: its retry must still name the tasks it cancelled."""
    cancelled = queue(http, 1, 2)
    body = {"rollout_ids": None, "request_id": "cancel-1"}
    assert http.post("/tasks/cancel", json=body).json() == {"cancelled": cancelled}
    later = queue(http, 3)
    assert http.post("/tasks/cancel", json=body).json() == {"cancelled": cancelled}
    assert state(served)["queued"] == later  # the repeat cancelled nothing more


# -- the key and the runs -------------------------------------------------------

ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/tasks", {"tasks": [{"sample": 1}]}),
    ("POST", "/tasks/cancel", {"rollout_ids": None}),
    ("POST", "/resources", {"resources": {"prompt": PROMPT}}),
    ("POST", "/rollouts/take", {"rollout_ids": None}),
    ("POST", "/rollouts/wait", {"rollout_ids": [], "timeout": 0}),
    ("GET", "/rollouts/rollout-x", None),
]


def test_every_producer_route_needs_the_key() -> None:
    with serving(api_key=KEY) as served, httpx.Client(base_url=served.endpoint) as http:
        keyed = {"Authorization": f"Bearer {KEY}"}
        (rollout_id,) = http.post("/tasks", json={"tasks": [{"sample": "x"}]}, headers=keyed).json()["rollout_ids"]
        before = state(served)
        for method, path, body in ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                refused = http.request(method, path, json=body, headers=headers)
                assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer"), path
        assert state(served) == before
        for method, path, body in ROUTES:
            path = path.replace("rollout-x", rollout_id)
            assert http.request(method, path, json=body, headers=keyed).status_code == 200, path


async def test_between_runs_the_routes_answer_503() -> None:
    server = AttemptAwareServer(port=0, producer_api=True)  # not started: no store
    transport = httpx.ASGITransport(app=server._app)  # pyright: ignore[reportPrivateUsage]
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as http:
        for method, path, body in ROUTES:
            answer = await http.request(method, path, json=body)
            assert (answer.status_code, answer.json()) == (503, {"detail": "Server not fully initialized."}), path


def test_the_routes_are_in_the_openapi_schema(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for method, path, _ in ROUTES:
        operation = paths[path.replace("rollout-x", "{rollout_id}")][method.lower()]
        assert operation["summary"] and "200" in operation["responses"], path
    assert paths["/rollouts/wait"]["post"]["responses"]["404"]


def test_a_server_the_trainer_owns_has_no_producer_routes() -> None:
    """Off unless asked for (serve turns them on): on verl's daemon, open on 0.0.0.0 without a key by default,
    anyone could otherwise take the trainer's results or publish resources that redirect its workers' LLM calls."""
    app = AttemptAwareServer(port=0)._app  # pyright: ignore[reportPrivateUsage]
    served = {
        (method, str(getattr(route, "path", "")))
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
    }  # by method: agentlightning 0.3.0's dashboard, where installed, has read-only pages at GET /rollouts, /resources
    producer = {(method, path.replace("rollout-x", "{rollout_id}")) for method, path, _ in ROUTES}
    assert not served & producer
