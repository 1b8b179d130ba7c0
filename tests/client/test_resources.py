"""The resources a claim's agent is handed: LLM endpoints on the daemon's attempt-aware proxy name its attempt.

Against a real server whose tasks name the proxy's port (``AttemptTask.llm_proxy_port``, set by
verl's daemon): each claim gets its own attempt's endpoint, through upstream's resources cache,
which keeps what the server served; nothing changes without the port, off the proxy, or off a claim.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from agentlightning import LLM

from lightning_attempts import AttemptAwareClient, AttemptAwareServer, AttemptTask
from lightning_attempts.client.claims import Claim
from lightning_attempts.client.resources import scoped
from lightning_attempts.compat import ResourcesUpdate
from lightning_attempts.endpoints import attempt_endpoint
from lightning_attempts.llm_proxy.targets import Attempt, parse_target
from lightning_attempts.testing import ServerThread

PORT = 41234
PROXY = f"http://127.0.0.1:{PORT}/v1"
OTHER = "http://127.0.0.1:8000/v1"  # an LLM elsewhere (not the proxy): left alone
Served = ServerThread[AttemptAwareServer]


@pytest.mark.parametrize(
    ("endpoint", "served"),
    [
        (PROXY, f"http://127.0.0.1:{PORT}/rollout/r-1/attempt/a-1/v1"),
        (f"http://10.231.0.1:{PORT}/v1/", f"http://10.231.0.1:{PORT}/rollout/r-1/attempt/a-1/v1/"),  # served to a host
        (f"https://[fd00::5]:{PORT}/v1?x=1", f"https://[fd00::5]:{PORT}/rollout/r-1/attempt/a-1/v1?x=1"),
        (OTHER, OTHER),
        (f"http://127.0.0.1:{PORT}/v2", f"http://127.0.0.1:{PORT}/v2"),  # not the proxy's /v1
        (f"http://127.0.0.1:{PORT}/rollout/x/attempt/y/v1", f"http://127.0.0.1:{PORT}/rollout/x/attempt/y/v1"),
        ("http://127.0.0.1/v1", "http://127.0.0.1/v1"),
        ("not a url", "not a url"),
        (f"http://127.0.0.1:{PORT}:9/v1", f"http://127.0.0.1:{PORT}:9/v1"),
    ],
)
def test_only_the_proxys_v1_is_scoped(endpoint: str, served: str) -> None:
    assert attempt_endpoint(endpoint, PORT, "r-1", "a-1") == served


def test_ids_are_percent_encoded() -> None:
    assert attempt_endpoint(PROXY, PORT, "r/1", "a 1").endswith("/rollout/r%2F1/attempt/a%201/v1")


def test_scoping_copies_and_keeps_other_resources() -> None:
    resources = {"main_llm": LLM(endpoint=PROXY, model="m"), "judge": LLM(endpoint=OTHER, model="j")}
    update = ResourcesUpdate.model_construct(resources_id="res-1", resources=resources)  # 0.3.0 has more fields
    claim = Claim("r-1", "a-1", 1, None, PORT)
    mine = scoped(update, claim)
    assert mine.resources["main_llm"].endpoint.endswith("/rollout/r-1/attempt/a-1/v1")  # pyright: ignore
    assert mine.resources["judge"].endpoint == OTHER  # pyright: ignore
    assert update.resources["main_llm"].endpoint == PROXY  # pyright: ignore # the original is untouched
    assert scoped(update, Claim("r-1", "a-1")) is update  # the server named no proxy


@pytest.fixture
def resources_id(served: Served) -> Iterator[str]:
    server = served.server
    resources = {"main_llm": LLM(endpoint=PROXY, model="m"), "judge": LLM(endpoint=OTHER, model="j")}
    yield served.call(server.update_resources(resources))  # pyright: ignore[reportArgumentType]


def queue(served: Served, resources_id: str, count: int) -> None:
    for n in range(count):
        served.call(served.server.queue_task({"n": n}, resources_id=resources_id))


def endpoint_of(update: ResourcesUpdate | None) -> str:
    assert update is not None
    return update.resources["main_llm"].endpoint  # pyright: ignore


def scoped_to(task: AttemptTask) -> str:
    return f"http://127.0.0.1:{PORT}/rollout/{task.rollout_id}/attempt/{task.attempt_id}/v1"


def test_each_claim_gets_its_own_attempts_endpoint_through_upstreams_cache(served: Served, resources_id: str) -> None:
    served.server.llm_proxy_port = PORT
    queue(served, resources_id, 2)
    client = AttemptAwareClient(served.endpoint, poll_interval=0.01, timeout=10)
    try:
        for _ in range(2):  # the runner: claim, then fetch the task's resources in the same thread
            task = client.poll_next_task()
            assert task is not None and task.llm_proxy_port == PORT
            update = client.get_resources_by_id(resources_id)
            assert endpoint_of(update) == scoped_to(task)
            assert update is not None and update.resources["judge"].endpoint == OTHER  # pyright: ignore
            assert endpoint_of(client.get_latest_resources()) == scoped_to(task)
            assert endpoint_of(client._resource_cache[resources_id]) == PROXY  # pyright: ignore[reportPrivateUsage]
        elsewhere: list[str] = []  # a thread that claimed nothing gets what the server served
        thread = threading.Thread(
            target=lambda: elsewhere.append(endpoint_of(client.get_resources_by_id(resources_id)))
        )
        thread.start()
        thread.join()
        assert elsewhere == [PROXY]
    finally:
        client.close()


def test_the_async_path_scopes_to_the_claim_of_its_own_task(served: Served, resources_id: str) -> None:
    served.server.llm_proxy_port = PORT
    queue(served, resources_id, 2)
    client = AttemptAwareClient(served.endpoint, poll_interval=0.01, timeout=10)

    async def rollout() -> tuple[str, str]:
        task = await client.poll_next_task_async()
        assert task is not None
        return endpoint_of(await client.get_resources_by_id_async(resources_id)), scoped_to(task)

    async def both() -> list[tuple[str, str]]:
        try:
            return list(await asyncio.gather(rollout(), rollout()))
        finally:
            await client.aclose()

    for got, expected in asyncio.run(both()):
        assert got == expected
    client.close()


def test_without_a_proxy_port_the_endpoint_is_what_the_server_served(served: Served, resources_id: str) -> None:
    queue(served, resources_id, 1)
    client = AttemptAwareClient(served.endpoint, poll_interval=0.01, timeout=10)
    try:
        task = client.poll_next_task()
        assert task is not None and task.llm_proxy_port is None
        assert endpoint_of(client.get_resources_by_id(resources_id)) == PROXY
    finally:
        client.close()


def test_the_proxy_reads_the_attempt_back_from_the_endpoint_the_agent_is_handed() -> None:
    endpoint = attempt_endpoint(PROXY, PORT, "rollout-1/x", "a-1")
    target = parse_target(urlsplit(endpoint).path.encode() + b"/chat/completions")
    assert target is not None and target.attempt == Attempt("rollout-1/x", "a-1")
    assert target.upstream_path == "/v1/chat/completions"
