"""``serve``'s LLM proxy options: backends and port from the flags or the variables, checked before anything loads."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from lightning_attempts.cli import main
from lightning_attempts.errors import OptionError
from lightning_attempts.serve_llm_proxy import ProxySettings, backend_address, proxy_settings
from lightning_attempts.switch.variables import LLM_BACKENDS, LLM_PROXY_PORT, unrecognised


@pytest.mark.parametrize(
    ("written", "address"),
    [
        ("10.0.0.7:8000", "10.0.0.7:8000"),
        ("http://10.0.0.7:8000", "10.0.0.7:8000"),
        ("http://10.0.0.7:8000/", "10.0.0.7:8000"),
        (" http://vllm-0.local:8000/v1 ", "vllm-0.local:8000"),
        ("http://[::1]:8000/v1/", "[::1]:8000"),
    ],
)
def test_a_backend_is_its_address_or_its_url(written: str, address: str) -> None:
    assert backend_address(written) == address


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("", "empty"),
        ("10.0.0.7", "names no port"),
        ("https://10.0.0.7:8000", "only http://"),
        ("http://10.0.0.7:8000/v2", "the proxy adds /v1"),
        ("http://user:pw@10.0.0.7:8000", "the proxy adds /v1"),
        ("http://10.0.0.7:8000/v1?x=1", "the proxy adds /v1"),
        ("10.0.0.7:99999", "out of range"),
    ],
)
def test_a_bad_backend_is_refused_saying_what_to_write(written: str, said: str) -> None:
    with pytest.raises(OptionError, match=said):
        backend_address(written)


def test_flags_win_over_variables_and_the_port_defaults_to_the_servers_plus_one() -> None:
    environ = {LLM_BACKENDS: "a:1, b:2,", LLM_PROXY_PORT: "7000"}
    assert proxy_settings([], None, 9999, environ) == ProxySettings(("a:1", "b:2"), 7000)
    assert proxy_settings(["c:3"], 7100, 9999, environ) == ProxySettings(("c:3",), 7100)
    assert proxy_settings(["c:3"], None, 9999, {}) == ProxySettings(("c:3",), 10000)
    assert proxy_settings(["c:3"], None, 0, {}) == ProxySettings(("c:3",), 0)  # any free port, as the server's
    assert proxy_settings([], None, 9999, {}) is None  # no backend: no proxy, as before


@pytest.mark.parametrize(
    ("backends", "port", "server_port", "environ", "said"),
    [
        ([], 7000, 9999, {}, "no backend"),
        ([], None, 9999, {LLM_PROXY_PORT: "7000"}, "no backend"),
        (["a:1", "http://a:1/v1"], None, 9999, {}, "named twice"),
        ([], None, 9999, {LLM_BACKENDS: "a"}, f"{LLM_BACKENDS}: .*names no port"),
        (["a:1"], None, 9999, {LLM_PROXY_PORT: "x"}, f"{LLM_PROXY_PORT} is not a valid value"),
        (["a:1"], 9999, 9999, {}, "the server's own port"),
        (["a:1"], None, 65535, {}, "give --llm-proxy-port"),
    ],
)
def test_wrong_settings_name_what_is_wrong(
    backends: list[str], port: int | None, server_port: int, environ: dict[str, str], said: str
) -> None:
    with pytest.raises(OptionError, match=said):
        proxy_settings(backends, port, server_port, environ)


def test_serve_refuses_a_bad_backend_before_it_binds_or_loads_anything() -> None:
    result = CliRunner().invoke(main, ["serve", "--llm-backend", "https://x:1"])
    assert result.exit_code == 2
    assert "only http://" in result.output and "starting on" not in result.output


def test_serve_help_names_the_llm_proxy_options() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for said in ("--llm-backend", "--llm-proxy-port", LLM_BACKENDS, LLM_PROXY_PORT, "the server's port + 1"):
        assert said in " ".join(result.output.split())


def test_the_switch_knows_serves_llm_proxy_variables() -> None:
    assert unrecognised({LLM_BACKENDS: "a:1", LLM_PROXY_PORT: "7000"}) == {}


def test_serve_says_at_once_that_the_proxy_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        arguments = ["serve", "--port", "0", "--llm-backend", "a:1", "--llm-proxy-port", str(port)]
        result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 1
    assert f"Could not serve on 127.0.0.1:{port}" in result.output and "starting on" not in result.output
