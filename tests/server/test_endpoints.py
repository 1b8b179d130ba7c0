"""The endpoint rewrite: a loopback LLM endpoint is served as the host the worker reached the server by."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from agentlightning import LLM

from lightning_attempts import AttemptAwareServer
from lightning_attempts.endpoints import is_loopback_host, reachable_endpoint, reachable_resources, request_host
from lightning_attempts.hosts import client_url
from lightning_attempts.testing import serve_in_thread

PROXY = "http://127.0.0.1:41234/v1"


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST", "localhost.", "api.localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]",
     "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"],
)  # fmt: skip
def test_loopback_names_and_addresses(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["10.231.0.1", "trainer-host", "localhost-1", "mylocalhost", "0.0.0.0", "::", "fe80::1", "::ffff:10.0.0.1"]
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    ("endpoint", "host_header", "served"),
    [
        (PROXY, "10.231.0.1:9999", "http://10.231.0.1:41234/v1"),  # the server's port is not the proxy's
        (PROXY, "trainer-host", "http://trainer-host:41234/v1"),
        (PROXY, "Trainer.Example.org.:80", "http://trainer.example.org.:41234/v1"),
        ("http://localhost:8000/v1/chat?x=1#f", "10.0.0.5", "http://10.0.0.5:8000/v1/chat?x=1#f"),
        ("https://user:secret@127.0.0.1/v1", "10.0.0.5:443", "https://user:secret@10.0.0.5/v1"),  # no port: none added
        ("http://[::1]:41234/v1", "10.0.0.5:9999", "http://10.0.0.5:41234/v1"),
        (PROXY, "[fd00::5]:9999", "http://[fd00::5]:41234/v1"),  # IPv6 served in brackets
        (PROXY, "[fd00::5]", "http://[fd00::5]:41234/v1"),
        ("http://[::1]/v1", "[2001:db8::7]:9999", "http://[2001:db8::7]/v1"),
    ],
)
def test_a_loopback_endpoint_is_served_as_the_workers_host(endpoint: str, host_header: str, served: str) -> None:
    assert reachable_endpoint(endpoint, host_header) == served


@pytest.mark.parametrize(
    "endpoint",
    ["http://10.1.2.3:8000/v1", "http://llm.internal/v1", "https://api.openai.com/v1", "http://0.0.0.0:8000/v1",
     "not a url", "", "http://127.0.0.1:bad/v1"],
)  # fmt: skip
def test_non_loopback_endpoints_are_never_changed(endpoint: str) -> None:
    assert reachable_endpoint(endpoint, "10.231.0.1:9999") == endpoint


@pytest.mark.parametrize(
    "host_header",
    [None, "", "127.0.0.1:9999", "localhost:9999", "[::1]:9999", "user@evil:1", "a/b", "evil:port", "bad_host",
     "[not-ipv6]", "x?y", "10.0.0.1:99999"],
)  # fmt: skip
def test_a_worker_on_loopback_or_an_unusable_host_gets_the_endpoint_as_stored(host_header: str | None) -> None:
    assert reachable_endpoint(PROXY, host_header) == PROXY


def test_request_host_keeps_the_host_only() -> None:
    assert request_host("10.0.0.1:9999") == "10.0.0.1"
    assert request_host("[fd00::1]:9999") == "[fd00::1]"
    assert request_host("x/../y") is None


def update(**resources: dict[str, Any]) -> dict[str, Any]:
    return {"resources_id": "res-1", "version": 1, "resources": resources}


def test_resources_rewrite_only_llm_endpoints_and_leave_the_stored_update_unchanged() -> None:
    stored = update(
        main_llm={"resource_type": "llm", "endpoint": PROXY, "model": "m", "sampling_parameters": {"t": 0.7}},
        proxy={"resource_type": "proxy_llm", "endpoint": "http://localhost:4000/v1", "model": "m"},
        remote={"resource_type": "llm", "endpoint": "http://10.9.9.9:8000/v1", "model": "m"},
        prompt={"resource_type": "prompt_template", "template": "http://127.0.0.1:1/", "engine": "f-string"},
    )
    before = copy.deepcopy(stored)
    served = reachable_resources(stored, "10.231.0.1:9999")
    assert stored == before  # a copy is served
    assert served["resources"]["main_llm"] == {
        **before["resources"]["main_llm"],
        "endpoint": "http://10.231.0.1:41234/v1",
    }
    assert served["resources"]["proxy"]["endpoint"] == "http://10.231.0.1:4000/v1"
    assert served["resources"]["remote"] == before["resources"]["remote"]
    assert served["resources"]["prompt"] == before["resources"]["prompt"]
    assert {k: v for k, v in served.items() if k != "resources"} == {"resources_id": "res-1", "version": 1}


def test_resources_from_a_loopback_worker_are_served_as_stored() -> None:
    stored = update(main_llm={"resource_type": "llm", "endpoint": PROXY, "model": "m"})
    assert reachable_resources(stored, "127.0.0.1:9999") == stored
    assert reachable_resources({"resources_id": "x"}, "10.0.0.1") == {"resources_id": "x"}


# -- served by the server ---------------------------------------------------------


@pytest.fixture
def llm_resources() -> dict[str, Any]:
    return {"main_llm": LLM(endpoint=PROXY, model="m"), "remote": LLM(endpoint="http://10.9.9.9:8000/v1", model="m")}


@pytest.mark.parametrize("option", [None, False, True])
def test_the_server_rewrites_what_it_serves_only_when_told_to(
    option: bool | None, llm_resources: dict[str, Any]
) -> None:
    server = AttemptAwareServer(port=0, rewrite_loopback_endpoints=option)
    with serve_in_thread(server) as served:
        resources_id = served.call(server.update_resources(llm_resources))
        with httpx.Client(base_url=served.endpoint, timeout=10) as http:
            for path in ("/resources/latest", f"/resources/{resources_id}"):
                remote = http.get(path, headers={"Host": "10.231.0.1:9999"}).json()["resources"]
                local = http.get(path).json()["resources"]  # Host: 127.0.0.1:<port>
                assert remote["main_llm"]["endpoint"] == ("http://10.231.0.1:41234/v1" if option else PROXY)
                assert remote["remote"]["endpoint"] == "http://10.9.9.9:8000/v1"
                assert local["main_llm"]["endpoint"] == PROXY
            # Upstream's answers otherwise, word for word.
            assert http.get("/resources/nope").json() == {"detail": "Resource ID 'nope' not found."}
        stored = served.call(server.store.get_latest_resources())
        assert stored is not None
        main_llm = stored.resources["main_llm"]
        assert isinstance(main_llm, LLM) and main_llm.endpoint == PROXY  # stored as published


def test_no_resources_yet_is_upstreams_404() -> None:
    with serve_in_thread(AttemptAwareServer(port=0, rewrite_loopback_endpoints=True)) as served:
        answer = httpx.get(served.endpoint + "/resources/latest", headers={"Host": "10.0.0.1"}, timeout=10)
    assert (answer.status_code, answer.json()) == (404, {"detail": "No resources have been set on the server."})


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000"),
        ("", "http://127.0.0.1:8000"),
        ("::", "http://[::1]:8000"),
        ("[::]", "http://[::1]:8000"),
        ("::1", "http://[::1]:8000"),
        ("10.0.3.1", "http://10.0.3.1:8000"),
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("trainer-host", "http://trainer-host:8000"),
    ],
)
def test_a_servers_endpoint_is_one_a_client_can_use(host: str, url: str) -> None:
    assert client_url(host, 8000) == url


def test_a_server_bound_to_every_interface_gives_a_loopback_endpoint() -> None:
    """``http://0.0.0.0:PORT``, which no client can send to, was its endpoint."""
    server = AttemptAwareServer(host="0.0.0.0", port=0, api_key="k")
    assert server.endpoint == "http://127.0.0.1:0"
    with serve_in_thread(server):
        assert server.endpoint == f"http://127.0.0.1:{server.port}"
        answer = httpx.get(server.endpoint + "/task", headers={"x-api-key": "k"}, timeout=10)
        assert answer.json() == {"is_available": False, "task": None}
