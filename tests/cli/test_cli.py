"""The ``lightning-attempts`` command line, run as a real process."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Generator, Iterator
from contextlib import contextmanager

import httpx
import pytest
from click.testing import CliRunner

from lightning_attempts.cli import main, serve
from lightning_attempts.releases import AGENTLIGHTNING_VERSION
from lightning_attempts.switch.variables import SWITCH_DEFAULTS, option_variables

from .. import prewarmed


@pytest.fixture
def serve_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    command = [sys.executable, "-m", "lightning_attempts", "serve", "--port", "0", "--task-timeout", "30"]
    command += ["--stale-policy", "salvage", "--require-attempt-id", "--log-level", "warning"]
    command += ["--unresponsive-seconds", "20", "--max-claims", "3"]
    process = prewarmed.popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        endpoint = ""
        for line in process.stderr:
            if match := re.search(r"serving on (http://\S+)", line):
                endpoint = match.group(1)
                break
        assert endpoint, "the server never said where it serves"
        yield process, endpoint
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@contextmanager
def serving(*arguments: str, env: dict[str, str]) -> Generator[tuple[subprocess.Popen[str], str]]:
    """``lightning-attempts serve --port 0 --log-level warning ARGUMENTS`` running; its ``serving on`` line."""
    command = [sys.executable, "-m", "lightning_attempts", "serve", "--port", "0", "--log-level", "warning"]
    process = prewarmed.popen([*command, *arguments], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stderr is not None
        starting = process.stderr.readline()
        assert starting.startswith("lightning-attempts: starting on 127.0.0.1:0"), starting  # at once
        line = process.stderr.readline()
        assert "serving on" in line, line + process.stderr.read()
        yield process, line
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_serve_runs_a_patched_server_until_terminated(serve_process: tuple[subprocess.Popen[str], str]) -> None:
    process, endpoint = serve_process
    assert httpx.get(endpoint + "/task").json() == {"is_available": False, "task": None}
    refused = httpx.post(endpoint + "/rollout", json={"rollout_id": "r"})
    assert (refused.status_code, refused.json()["reason"]) == (400, "attempt_required")  # --require-attempt-id
    assert httpx.get(endpoint + "/attempts/stats").json()["refused"] == 1
    process.send_signal(signal.SIGINT)  # Ctrl+C: a graceful stop, no traceback
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None and "Traceback" not in process.stderr.read()


def test_serve_help_lists_the_options() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    options = ("--host", "--port", "--task-timeout", "--stale-policy", "--require-attempt-id", "--log-level")
    more = ("--unresponsive-seconds", "--max-claims", "--retry-failed", "--max-remembered", "--max-body-bytes")
    for option in (*options, *more, "--api-key"):
        assert option in result.output


def test_serve_has_a_flag_for_every_server_option_and_names_its_variable() -> None:
    flags = {param.name: param for param in serve.params}
    assert set(option_variables().values()) <= set(flags)
    help_text = " ".join(CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output.split())
    for variable, option in option_variables().items():
        fallback = ", then AGL_KEY" if option == "api_key" else ""
        assert f"[env var: {variable}{fallback}]" in help_text


def test_serve_help_names_agl_key_and_gives_a_flags_default_in_words() -> None:
    """serve reads AGL_KEY when LIGHTNING_ATTEMPTS_API_KEY is unset; a flag's unset default is off, not "none"."""
    help_text = " ".join(CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output.split())
    assert "[env var: LIGHTNING_ATTEMPTS_API_KEY, then AGL_KEY]" in help_text
    rewrite = help_text.partition("--no-rewrite-loopback-endpoints")[2].partition("--producer-api")[0]
    assert "[default: off]" in rewrite
    assert "None" not in rewrite and "[default: none]" not in rewrite


def test_serve_leases_by_default_and_none_turns_them_off() -> None:
    lease_seconds = SWITCH_DEFAULTS["unresponsive_seconds"]

    def lease(*arguments: str, **variables: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTNING_ATTEMPTS_")} | variables
        with serving(*arguments, env=env) as (_, line):
            match = re.search(r"serving on http://\S+ \(stale_policy=\w+, ([^,]+),", line)
            assert match, line
            return match.group(1)

    assert lease() == f"lease {lease_seconds:g} s"
    assert lease("--unresponsive-seconds", "none") == "no leases"
    assert lease(LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS="none") == "no leases"
    assert lease("--unresponsive-seconds", "5", LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS="") == "lease 5 s"
    refused = CliRunner().invoke(main, ["serve", "--unresponsive-seconds", "-1"])
    assert refused.exit_code == 2 and "unresponsive_seconds must be positive (or None" in refused.output


def test_serve_reads_the_variables_and_explicit_flags_win() -> None:
    """The same variables as the switch and install(): LIGHTNING_ATTEMPTS_API_KEY must not leave it open."""
    variables = {
        "LIGHTNING_ATTEMPTS_API_KEY": "abc",
        "LIGHTNING_ATTEMPTS_STALE_POLICY": "salvage",
        "LIGHTNING_ATTEMPTS_REQUIRE_ATTEMPT_ID": "1",
        "AGL_KEY": "lower-precedence",
    }
    flag = "--no-require-attempt-id"  # wins over LIGHTNING_ATTEMPTS_REQUIRE_ATTEMPT_ID=1
    with serving(flag, env={**os.environ, **variables}) as (process, line):
        match = re.search(r"serving on (http://\S+) \(stale_policy=salvage, lease 60 s, API key required\)", line)
        assert match, line
        endpoint = match.group(1)
        assert httpx.get(endpoint + "/attempts/stats").status_code == 401
        assert httpx.get(endpoint + "/attempts/stats", headers={"x-api-key": "lower-precedence"}).status_code == 401
        keyed = {"x-api-key": "abc"}
        unknown = httpx.post(endpoint + "/rollout", json={"rollout_id": "r"}, headers=keyed)
        assert (unknown.status_code, unknown.json()["reason"]) == (409, "unknown_rollout")  # not attempt_required
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0


def test_serve_refuses_a_bad_variable_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_ATTEMPTS_MAX_CLAIMS", "three")
    result = CliRunner().invoke(main, ["serve", "--port", "0"])
    assert result.exit_code == 2
    assert "LIGHTNING_ATTEMPTS_MAX_CLAIMS is not a valid value" in result.output


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LIGHTNING_ATTEMPTS_MAX_CLAIMS", "0", "max_claims must be at least 1"),
        ("LIGHTNING_ATTEMPTS_RETRY_FAILED", "-1", "retry_failed must not be negative"),
        ("LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS", "0", "unresponsive_seconds must be positive"),
    ],
)
def test_serve_refuses_a_variable_out_of_range_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    """A usage error naming the variable, not a traceback or uvicorn's failed start-up."""
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["serve", "--port", "0"])
    assert result.exit_code == 2, result.output
    assert f"Error: {variable} is not a valid value: {message}" in result.output
    assert "Traceback" not in result.output and "startup" not in result.output


def test_serve_with_the_switch_on_refuses_a_bad_variable_in_one_line_too() -> None:
    env = {**os.environ, "LIGHTNING_ATTEMPTS_INSTALL": "1", "LIGHTNING_ATTEMPTS_MAX_CLAIMS": "0"}
    command = [sys.executable, "-m", "lightning_attempts", "serve", "--port", "0"]
    finished = prewarmed.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert finished.returncode == 2, finished.stderr
    assert "Error: LIGHTNING_ATTEMPTS_MAX_CLAIMS is not a valid value: max_claims must be" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_serve_on_every_interface_gives_an_endpoint_a_client_can_use_and_says_where_it_is_bound() -> None:
    """``--host 0.0.0.0`` said ``serving on http://0.0.0.0:PORT``, a URL no client can send to."""
    command = [sys.executable, "-m", "lightning_attempts", "serve", "--host", "0.0.0.0", "--port", "0"]
    env = {**os.environ, "AGL_KEY": "k3y"}  # beyond loopback: with a key
    process = prewarmed.popen([*command, "--log-level", "warning"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stderr is not None
        process.stderr.readline()  # starting on 0.0.0.0:0
        line = process.stderr.readline()
        match = re.search(r"serving on (http://127\.0\.0\.1:\d+), bound to 0\.0\.0\.0 \(every interface\) \(", line)
        assert match, line
        assert httpx.get(match.group(1) + "/task", headers={"x-api-key": "k3y"}).json()["is_available"] is False
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_bad_policy_is_refused() -> None:
    result = CliRunner().invoke(main, ["serve", "--stale-policy", "maybe"])
    assert result.exit_code == 2
    assert "'maybe' is not one of 'reject', 'salvage'" in result.output


def test_serve_takes_its_api_key_from_agl_key() -> None:
    with serving(env={**os.environ, "AGL_KEY": "k3y"}) as (process, line):
        match = re.search(r"serving on (http://\S+) .*API key required", line)
        assert match, line
        endpoint = match.group(1)
        assert httpx.get(endpoint + "/task").status_code == 401
        assert httpx.get(endpoint + "/task", headers={"x-api-key": "k3y"}).json()["is_available"] is False
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None and "k3y" not in process.stderr.read()


@pytest.mark.parametrize("log_level", ["info", "warning"])
def test_serve_on_a_busy_port_says_so_in_one_line(log_level: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = [sys.executable, "-m", "lightning_attempts", "serve", "--port", str(port), "--log-level", log_level]
        finished = prewarmed.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1
    reason = f"{os.strerror(errno.EADDRINUSE)} (errno {errno.EADDRINUSE})"
    # One line, whatever the log level: not even the one saying it starts (it never loads agentlightning), none
    # of uvicorn's start-up lines, upstream's lifespan or ours.
    assert finished.stderr.splitlines() == [f"lightning-attempts: Could not serve on 127.0.0.1:{port}: {reason}"]


def test_serve_checks_the_port_before_it_loads_agentlightning() -> None:
    """A busy port used to be said once agentlightning had loaded, 23 s on a busy machine."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        script = (
            "import sys\n"
            "from lightning_attempts.cli import main\n"
            "try:\n"
            f"    main(['serve', '--port', '{port}'])\n"
            "except SystemExit as done:\n"
            "    print(done.code, 'agentlightning' in sys.modules)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["1", "False"], done.stderr
    assert done.stderr.startswith(f"lightning-attempts: Could not serve on 127.0.0.1:{port}: ")


@pytest.mark.parametrize(("value", "kept"), [(None, "True"), ("False", "False")])
def test_the_commands_read_litellms_bundled_cost_map_unless_told_otherwise(value: str | None, kept: str) -> None:
    """Else LiteLLM, imported with agentlightning, tries to download it: offline, four warnings and retries."""
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    if value is not None:
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = value
    script = (
        "import os\n"
        "from lightning_attempts.cli import main\n"
        "try:\n"
        "    main(['serve', '--port', '-1'])\n"  # refused before anything loads
        "except SystemExit:\n"
        "    print(os.environ.get('LITELLM_LOCAL_MODEL_COST_MAP'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.stdout.strip() == kept, done.stderr


def test_version_and_help_answer_without_importing_agentlightning() -> None:
    """They used to import agentlightning (12.5 s on 0.3.0, most of it litellm)."""
    script = (
        "import sys\n"
        "from lightning_attempts.cli import main\n"
        "for arguments in (['--version'], ['--help'], ['serve', '--help']):\n"
        "    try:\n"
        "        main(arguments)\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, done.code\n"
        "print('agentlightning' in sys.modules, 'lightning_attempts.server' in sys.modules)\n"
    )
    done = prewarmed.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--port", "99999"], "99999 is not in the range 0<=x<=65535"),
        (["--port", "-1"], "-1 is not in the range 0<=x<=65535"),
        (["--task-timeout", "-1"], "task_timeout_seconds must be a finite number of seconds above 0"),
        (["--task-timeout", "nan"], "task_timeout_seconds must be a finite number of seconds above 0"),
        (["--max-remembered", "-5"], "max_remembered must not be negative"),
        (["--max-poll-wait", "inf"], "max_poll_wait must be a finite number of seconds"),
    ],
)
def test_serve_refuses_a_flag_out_of_range_in_one_usage_line(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_serve_refuses_a_switch_that_is_neither_on_nor_off(value: str) -> None:
    env = {**os.environ, "LIGHTNING_ATTEMPTS_INSTALL": value}
    command = [sys.executable, "-m", "lightning_attempts", "serve", "--port", "0"]
    finished = prewarmed.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert finished.returncode == 2, finished.stderr
    assert f"LIGHTNING_ATTEMPTS_INSTALL is not a valid value: {value!r}" in finished.stderr
    assert "Traceback" not in finished.stderr


SLOW_AGENTLIGHTNING = """
import sys, time

class SlowAgentlightning:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "agentlightning":
            print("agentlightning is loading", flush=True)
            time.sleep(60)  # a Ctrl+C ends it
        return None

sys.meta_path.insert(0, SlowAgentlightning)
"""
"""A sitecustomize that holds `import agentlightning` for a minute: a Ctrl+C lands while it loads, on every release.

agentlightning 0.2 and 0.3 take seconds to load, 0.1 a fraction of one: a sleep in the test could not say which.
"""


@pytest.mark.parametrize("moment", ["at-once", "while-agentlightning-loads"])
def test_ctrl_c_while_serve_starts_is_one_line_and_status_130(
    moment: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    site = tmp_path_factory.mktemp("slow-agentlightning")
    (site / "sitecustomize.py").write_text(SLOW_AGENTLIGHTNING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "lightning_attempts", "serve", "--port", "0"]
    process = prewarmed.popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stderr is not None and process.stdout is not None
        starting = process.stderr.readline()
        assert "starting on" in starting, starting
        if moment == "while-agentlightning-loads":
            assert process.stdout.readline() == "agentlightning is loading\n"
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 130
        assert rest.splitlines() == ["lightning-attempts: interrupted before it served"], rest
    finally:
        process.kill()
        process.wait()


def test_switch_says_whether_this_environment_is_patched_and_with_what() -> None:
    """``lightning-attempts switch``: one line, exit 0 patched, 1 not, 2 the import would fail; never the key."""
    base = {name: None for name in os.environ if name.startswith("LIGHTNING_ATTEMPTS_")} | {"AGL_KEY": None}

    def switch(**variables: str) -> tuple[int, str, str]:
        done = CliRunner(env={**base, **variables}).invoke(main, ["switch"])
        return done.exit_code, done.stdout, done.stderr

    code, out, _ = switch(LIGHTNING_ATTEMPTS_INSTALL="1", LIGHTNING_ATTEMPTS_MAX_CLAIMS="3", AGL_KEY="s3cret")
    assert code == 0 and out.startswith("switch on (LIGHTNING_ATTEMPTS_INSTALL=1): agentlightning ")
    assert "AgentLightningServer -> AttemptAwareServer" in out and "max_claims=3, " in out
    assert "api_key: set" in out and "s3cret" not in out
    assert "api_key: none" in switch(LIGHTNING_ATTEMPTS_INSTALL="1")[1]
    code, out, err = switch(LIGHTNING_ATTEMPTS_INSTAL="1")
    left = f"switch off: LIGHTNING_ATTEMPTS_INSTALL is not on, agentlightning {AGENTLIGHTNING_VERSION} is left as it is"
    assert (code, out) == (1, left + "\n")
    assert "Did you mean LIGHTNING_ATTEMPTS_INSTALL?" in err
    code, out, err = switch(LIGHTNING_ATTEMPTS_INSTALL="1", LIGHTNING_ATTEMPTS_MAX_CLAIMS="0")
    assert code == 2 and out == "" and "LIGHTNING_ATTEMPTS_MAX_CLAIMS is not a valid value" in err
