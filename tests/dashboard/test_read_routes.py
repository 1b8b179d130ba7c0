"""The dashboard's read routes on a real server: agentlightning 0.3.0's shapes, bounded pages, the key's cookie."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from lightning_attempts import AttemptAwareServer
from lightning_attempts.dashboard import views
from lightning_attempts.dashboard.routes import RECOUNT_SECONDS, Recounted
from lightning_attempts.dashboard.workers import known_workers
from lightning_attempts.keys import COOKIE
from lightning_attempts.store import AttemptAwareDataStore
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

from ..upstream import RESOURCES

Served = ServerThread[AttemptAwareServer]
KEY = "dash-Key_0123456789"
PAGE_KEYS = {"items", "limit", "offset", "total"}


@pytest.fixture
def open_server() -> Iterator[Served]:
    server = AttemptAwareServer(port=0, task_timeout_seconds=60, unresponsive_seconds=30, clock=ManualClock())
    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        yield served


@pytest.fixture
def keyed() -> Iterator[Served]:
    server = AttemptAwareServer(port=0, task_timeout_seconds=60, api_key=KEY, clock=ManualClock())
    with serve_in_thread(server) as served:
        yield served


def test_tasks_and_claims_in_agentlightnings_shapes(open_server: Served) -> None:
    server, url = open_server.server, open_server.endpoint
    ids = [open_server.call(server.queue_task(f"sample {n}")) for n in range(3)]
    first = open_server.run(lambda: server.store.claim())
    assert first is not None and first.rollout_id == ids[0] and first.attempt_id is not None
    first_attempt = first.attempt_id
    open_server.run(lambda: server.store.release(ids[0], first_attempt, "interrupted"))  # requeued
    second = open_server.run(lambda: server.store.claim())  # takes ids[1]; ids[0] waits again, last
    assert second is not None

    everything = httpx.get(f"{url}/v1/agl/rollouts").json()
    assert set(everything) == PAGE_KEYS and everything["total"] == 3
    by_id = {item["rollout_id"]: item for item in everything["items"]}
    assert by_id[ids[0]]["status"] == "requeuing" and by_id[ids[1]]["status"] == "running"
    assert by_id[ids[2]]["status"] == "queuing" and by_id[ids[2]]["input"] == "sample 2"
    assert by_id[ids[1]]["attempt"]["attempt_id"] == second.attempt_id

    running = httpx.get(f"{url}/v1/agl/rollouts", params={"status_in": "running"}).json()
    assert [item["rollout_id"] for item in running["items"]] == [ids[1]] and running["total"] == 1
    paged = httpx.get(f"{url}/v1/agl/rollouts", params={"limit": 1, "offset": 1}).json()
    assert paged["total"] == 3 and len(paged["items"]) == 1 and paged["offset"] == 1

    attempts = httpx.get(f"{url}/v1/agl/rollouts/{ids[0]}/attempts").json()
    assert set(attempts) == PAGE_KEYS and attempts["total"] == 1
    (attempt,) = attempts["items"]
    assert attempt["sequence_id"] == 1 and attempt["attempt_id"] == first.attempt_id
    assert attempt["status"] == "failed" and attempt["metadata"]["outcome"] == "released"
    assert attempt["metadata"]["release_reason"] == "interrupted" and attempt["end_time"] is not None

    assert httpx.get(f"{url}/v1/agl/rollouts/no-such").status_code == 404
    assert httpx.get(f"{url}/v1/agl/rollouts", params={"limit": 0}).status_code == 400
    assert httpx.get(f"{url}/v1/agl/rollouts", params={"status_in": "bogus"}).status_code == 422
    resources = httpx.get(f"{url}/v1/agl/resources").json()
    assert resources["total"] == 1 and resources["items"][0]["latest"] is True
    assert httpx.get(f"{url}/v1/agl/workers").json()["total"] == 0
    assert httpx.get(f"{url}/v1/agl/spans", params={"rollout_id": ids[0]}).json()["total"] == 0  # no proxy here

    summary = httpx.get(f"{url}/dashboard/summary").json()
    assert summary["statuses"] == {
        "queuing": 1, "running": 1, "requeuing": 1, "succeeded": 0, "failed": 0, "cancelled": 0,
    }  # fmt: skip
    page = httpx.get(f"{url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_workers_are_named_by_their_claims_releases_and_stuck_claims() -> None:
    """A worker holding claims, one giving claims back unrun and one stuck on a claim the server ended: one row each,
    as their claims and releases name them."""
    clock = ManualClock()
    server = AttemptAwareServer(port=0, task_timeout_seconds=60, unresponsive_seconds=90, clock=clock)
    with serve_in_thread(server) as served, httpx.Client(base_url=served.endpoint) as http:
        served.call(server.update_resources(RESOURCES))
        ids = [served.call(server.queue_task(n)) for n in range(3)]
        stuck = http.get("/task", params={"worker": "stuck:3"}).json()["task"]
        given = http.get("/task", params={"worker": "broken:2"}).json()["task"]
        release = {"rollout_id": given["rollout_id"], "attempt_id": given["attempt_id"], "reason": "no_resources"}
        assert http.post("/release", json={**release, "worker": "broken:2"}).status_code == 200
        clock.advance(61)  # the stuck worker's claim times out, and it never comes back for it
        holding = [http.get("/task", params={"worker": "holder:1", "heartbeats": 1}).json()["task"] for _ in range(3)]
        assert {task["rollout_id"] for task in holding} == set(ids)
        attempts = http.get(f"/v1/agl/rollouts/{stuck['rollout_id']}/attempts").json()["items"]
        assert [attempt["worker_id"] for attempt in attempts] == ["stuck:3 at 127.0.0.1", "holder:1 at 127.0.0.1"]
        page = http.get("/v1/agl/workers").json()
        summary = http.get("/dashboard/summary").json()["workers"]
    assert summary == {"total": 3, "items": page["items"]}
    rows = {item["worker_id"]: item for item in page["items"]}
    assert set(rows) == {"holder:1 at 127.0.0.1", "broken:2 at 127.0.0.1", "stuck:3 at 127.0.0.1"}
    holder = rows["holder:1 at 127.0.0.1"]
    assert holder["status"] == "busy" and holder["current_rollout_id"] in {task["rollout_id"] for task in holding}
    assert holder["heartbeat_stats"] == {"claims_held": 3, "leased": 3, "given_back_unrun": 0, "stuck": 0}
    assert rows["broken:2 at 127.0.0.1"]["heartbeat_stats"]["given_back_unrun"] == 1
    assert rows["stuck:3 at 127.0.0.1"]["heartbeat_stats"] == {
        "claims_held": 0, "leased": 0, "given_back_unrun": 0, "stuck": 1,
    }  # fmt: skip
    assert rows["stuck:3 at 127.0.0.1"]["status"] == "idle"


def test_reading_changes_nothing(open_server: Served) -> None:
    server, url = open_server.server, open_server.endpoint
    for n in range(3):
        open_server.call(server.queue_task(n))
    open_server.run(lambda: server.store.claim())
    before = server.attempt_stats(), list(server.store.book.queue)
    for path in ("/v1/agl/rollouts", "/dashboard/summary", "/v1/agl/workers", "/v1/agl/resources", "/dashboard"):
        assert httpx.get(url + path).status_code == 200
    assert (server.attempt_stats(), list(server.store.book.queue)) == before


def test_a_browser_presents_the_key_in_a_cookie(keyed: Served) -> None:
    url = keyed.endpoint
    with httpx.Client(base_url=url) as browser:
        refused = browser.get("/dashboard", headers={"accept": "text/html"})
        assert refused.status_code == 401 and "/dashboard?key=" in refused.text
        assert browser.get("/dashboard", params={"key": "wrong"}).status_code == 401
        assert browser.get("/v1/agl/rollouts").status_code == 401
        login = browser.get("/dashboard", params={"key": KEY})
        assert login.status_code == 303 and login.headers["location"] == "dashboard"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert browser.get("/dashboard").status_code == 200  # the cookie, from here on
        assert browser.get("/v1/agl/rollouts").json()["total"] == 0
        assert browser.get("/dashboard/summary").status_code == 200
        # The cookie reads; it never claims, posts or changes anything.
        assert browser.get("/task").status_code == 401
        assert browser.post("/heartbeat", json={"rollout_id": "r", "attempt_id": "a"}).status_code == 401
    with httpx.Client(base_url=url) as browser:  # the form: the key in no URL, so in no access log
        form = browser.get("/dashboard", headers={"accept": "text/html"}).text
        assert 'action="dashboard/login"' in form and 'name="key"' in form
        assert browser.post("/dashboard/login", data={"key": "wrong"}).status_code == 401
        assert browser.post("/dashboard/login", content=b"key=" + b"x" * 5000).status_code == 401  # bounded
        login = browser.post("/dashboard/login", data={"key": KEY})
        assert login.status_code == 303 and login.headers["location"] == "../dashboard"
        assert browser.get("/v1/agl/rollouts").status_code == 200
    wrong_cookie = httpx.get(f"{url}/v1/agl/rollouts", cookies={COOKIE: "wrong"})
    assert wrong_cookie.status_code == 401
    assert keyed.server.attempt_stats()["unauthorized"] >= 8


def test_a_page_at_20000_tasks_in_flight_is_bounded(open_server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """What one refresh of the page costs with 20,000 tasks claimed by 200 workers: printed, for README's figures."""
    server, url = open_server.server, open_server.endpoint

    async def queue_all() -> None:
        for n in range(20_000):
            await server.queue_task({"prompt": f"task {n}"})

    open_server.call(queue_all())
    open_server.run(lambda: [server.store.claim(worker=f"node-{n % 200}:1 at 10.0.0.{n % 200}") for n in range(20_000)])
    assert server.store.in_flight() == 20_000
    refresh = [
        "/dashboard/summary",
        "/v1/agl/rollouts?limit=50&status_in=queuing&status_in=running&status_in=requeuing",
    ]
    with httpx.Client(base_url=url) as client:
        for path in refresh:  # warm
            client.get(path)
        started, size = time.perf_counter(), 0
        for path in refresh * 5:
            answer = client.get(path)
            assert answer.status_code == 200
            size += len(answer.content)
        per_refresh = (time.perf_counter() - started) / 5
        last = client.get("/v1/agl/rollouts", params={"limit": 50, "offset": 19_950, "status_in": "running"}).json()
    assert last["total"] == 20_000 and len(last["items"]) == 50
    assert size / 5 < 100_000  # one page and the summary, never the whole store
    with capsys.disabled():
        print(f"\ndashboard refresh at 20,000 in flight: {per_refresh * 1000:.1f} ms, {size / 5 / 1000:.1f} kB")
        started = time.perf_counter()
        workers = open_server.run(lambda: known_workers(server.store, server.store.stranded()))  # on the server's loop
        print(f"a recount of the workers (every 10 s while watched): {(time.perf_counter() - started) * 1000:.1f} ms")
    assert len(workers) == 200 and {worker.holding for worker in workers} == {100}
    assert json.loads(json.dumps(views.status_counts(server.store)))["running"] == 20_000


def test_pages_run_across_statuses_and_finished_tasks_keep_their_claims(open_server: Served) -> None:
    server, url = open_server.server, open_server.endpoint
    ids = [open_server.call(server.queue_task(n)) for n in range(5)]
    done = open_server.run(lambda: server.store.claim())
    assert done is not None and done.attempt_id is not None
    done_attempt = done.attempt_id
    open_server.run(lambda: server.store.submit(done.model_copy(), done_attempt))  # type: ignore[arg-type]
    open_server.run(lambda: server.store.cancel([ids[1]]))
    open_server.run(lambda: server.store.claim())  # ids[2] running; ids[3], ids[4] queuing
    statuses = ["queuing", "running", "succeeded", "cancelled"]
    pages = [
        httpx.get(f"{url}/v1/agl/rollouts", params={"limit": 2, "offset": offset, "status_in": statuses}).json()
        for offset in (0, 2, 4)
    ]
    assert [page["total"] for page in pages] == [5, 5, 5]
    listed = [(item["rollout_id"], item["status"]) for page in pages for item in page["items"]]
    assert listed == [
        (ids[3], "queuing"), (ids[4], "queuing"), (ids[2], "running"), (ids[0], "succeeded"), (ids[1], "cancelled"),
    ]  # fmt: skip
    newest = httpx.get(f"{url}/v1/agl/rollouts", params={"status_in": "queuing", "sort_order": "desc"}).json()
    assert [item["rollout_id"] for item in newest["items"]] == [ids[4], ids[3]]
    succeeded = httpx.get(f"{url}/v1/agl/rollouts/{ids[0]}").json()
    assert succeeded["status"] == "succeeded" and succeeded["attempt"]["status"] == "succeeded"
    assert succeeded["end_time"] is not None
    attempts = httpx.get(f"{url}/v1/agl/rollouts/{ids[0]}/attempts").json()["items"]
    assert [a["metadata"]["outcome"] for a in attempts] == ["completed"]


def test_a_large_runs_full_passes_are_recounted_every_10_seconds_not_every_refresh() -> None:
    clock, passes = ManualClock(), list[int]()

    def count(store: AttemptAwareDataStore) -> int:
        passes.append(1)
        return len(passes)

    large = Recounted(count, clock=clock, always_below=0)  # as a store holding 10,000 tasks or more
    store = AttemptAwareDataStore()
    assert [large(store) for _ in range(5)] == [1] * 5  # five refreshes, one pass
    clock.advance(RECOUNT_SECONDS)
    assert large(store) == 2
    assert large(AttemptAwareDataStore()) == 3  # a new run's store: counted at once
    small = Recounted(count, clock=clock)  # fewer tasks than RECOUNT_ALWAYS_BELOW: counted afresh each time
    assert [small(store), small(store)] == [4, 5]
