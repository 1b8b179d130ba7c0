"""LIGHTNING_ATTEMPTS_INSTALL=1: every Python process that sees it installs when it imports agentlightning.

Each check runs in a fresh interpreter of this venv (an editable install, as CI's are), so
that site-packages' ``lightning_attempts_install.pth`` is what arms it; one test builds the
wheel and installs it into a new venv. Ray actors and verl's daemon are in ``tests/verl/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

import lightning_attempts
from _lightning_attempts_switch import SWITCH, switched_on
from lightning_attempts import AttemptAwareServer, OptionError
from lightning_attempts.compat import AGENTLIGHTNING_VERSION
from lightning_attempts.options import ServerArguments, settable
from lightning_attempts.switch.activation import activate
from lightning_attempts.switch.variables import SWITCH_DEFAULTS, from_variables, option_variables, resolve, unrecognised

from .. import prewarmed
from ..paths import ROOT

LEASE_SECONDS = SWITCH_DEFAULTS["unresponsive_seconds"]

REPORT = """
import json, sys
import agentlightning
from lightning_attempts import AttemptAwareClient, AttemptAwareServer
server = agentlightning.AgentLightningServer(port=0)
report = {
    "server": issubclass(agentlightning.AgentLightningServer, AttemptAwareServer),
    "client": issubclass(agentlightning.AgentLightningClient, AttemptAwareClient),
    "options": {name: getattr(server, name, None) for name in ("stale_policy", "max_claims", "unresponsive_seconds")},
    # The daemon's hook waits for agentlightning.verl.daemon: it imports none of it, nor verl or torch.
    "heavy": [name for name in ("agentlightning.verl", "lightning_attempts.verl.daemon", "verl", "torch")
              if name in sys.modules],
}
print(json.dumps(report))
"""


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without any LIGHTNING_ATTEMPTS_* variable, plus ``variables``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTNING_ATTEMPTS_")}
    return {**base, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **variables}


def run_python(code: str, python: str = sys.executable, **variables: str) -> Any:
    """Run ``code`` in a fresh interpreter (not in this directory); return the JSON it prints last."""
    return json.loads(run_python_whole(code, python, **variables).stdout.strip().splitlines()[-1])


def run_python_whole(code: str, python: str = sys.executable, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (not in this directory); it must succeed."""
    done = prewarmed.run(
        [python, "-c", textwrap.dedent(code)],
        env=environment(**variables),
        cwd="/",  # not the checkout: only the installed package and its .pth are on the path
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return done


UPSTREAM_CLASSES = """
import json, sys
import agentlightning
print(json.dumps([agentlightning.AgentLightningServer.__module__, "lightning_attempts" in sys.modules]))
"""


def test_unset_the_hook_is_not_even_imported() -> None:
    done = run_python_whole(
        """
        import json, sys
        armed = "_lightning_attempts_startup" in sys.modules
        import agentlightning
        from lightning_attempts.compat import AgentLightningServer
        print(json.dumps([armed, agentlightning.AgentLightningServer is AgentLightningServer]))
        """
    )
    assert json.loads(done.stdout) == [False, True]
    assert done.stderr == ""


def test_a_misspelt_switch_and_options_without_the_switch_are_reported() -> None:
    """Each named, with the likely intended variable; agentlightning stays upstream's (the switch is off)."""
    done = run_python_whole(
        UPSTREAM_CLASSES,
        LIGHTNING_ATTEMPTS_INSTAL="1",
        LIGHTNING_ATTEMPTS_MAX_CLAIMS="3",
        LIGHTNING_ATTEMPTS_STALE_POLCY="salvage",
    )
    assert json.loads(done.stdout) == ["agentlightning.server", True]
    assert done.stderr.splitlines() == [  # logging is not configured: each line says its level and logger
        "WARNING lightning_attempts.environment: LIGHTNING_ATTEMPTS_INSTAL is not a lightning_attempts variable: "
        "ignored. Did you mean LIGHTNING_ATTEMPTS_INSTALL?",
        "WARNING lightning_attempts.environment: LIGHTNING_ATTEMPTS_STALE_POLCY is not a lightning_attempts "
        "variable: ignored. Did you mean LIGHTNING_ATTEMPTS_STALE_POLICY?",
        "WARNING lightning_attempts.environment: LIGHTNING_ATTEMPTS_MAX_CLAIMS is set but LIGHTNING_ATTEMPTS_INSTALL "
        "is not: the servers agentlightning builds in this process ignore it unless it calls "
        "lightning_attempts.install(). Did you mean to set LIGHTNING_ATTEMPTS_INSTALL=1?",
    ]


@pytest.mark.once
def test_options_read_by_a_process_that_imports_lightning_attempts_itself_are_not_called_ignored() -> None:
    """``lightning-attempts serve`` and scripts calling ``install()`` read them; a misspelt one is still reported."""
    done = run_python_whole(
        "import lightning_attempts\n" + UPSTREAM_CLASSES,
        LIGHTNING_ATTEMPTS_MAX_CLAIMS="3",
        LIGHTNING_ATTEMPTS_MAX_CLAIM="3",
    )
    assert done.stderr.splitlines() == [
        "WARNING lightning_attempts.environment: LIGHTNING_ATTEMPTS_MAX_CLAIM is not a lightning_attempts variable: "
        "ignored. Did you mean LIGHTNING_ATTEMPTS_MAX_CLAIMS?"
    ]


def test_a_misspelt_variable_goes_to_logging_where_it_is_configured() -> None:
    done = run_python_whole(
        "import logging\nlogging.basicConfig(format='%(name)s|%(levelname)s|%(message)s')\n" + UPSTREAM_CLASSES,
        LIGHTNING_ATTEMPTS_INSTAL="1",
    )
    assert done.stderr.splitlines() == [
        "lightning_attempts.environment|WARNING|LIGHTNING_ATTEMPTS_INSTAL is not a lightning_attempts variable: "
        "ignored. Did you mean LIGHTNING_ATTEMPTS_INSTALL?"
    ]


def test_the_switch_says_in_one_line_that_it_installed_what_and_with_which_options() -> None:
    """Else nothing but an access log's ?heartbeats=1 tells a run with the switch from one without; no key shown."""
    variables = {SWITCH: "1", "LIGHTNING_ATTEMPTS_MAX_CLAIMS": "3", "AGL_KEY": "s3cret"}
    unconfigured = run_python_whole("import agentlightning", **variables).stderr
    configured = run_python_whole(
        "import logging\nlogging.basicConfig(level='INFO', format='%(name)s|%(levelname)s|%(message)s')\n"
        "import agentlightning",
        **variables,
    ).stderr
    [line] = [each for each in unconfigured.splitlines() if "lightning_attempts" in each]
    assert line.startswith("INFO lightning_attempts.environment: switch on (LIGHTNING_ATTEMPTS_INSTALL=1): ")
    assert "AgentLightningServer -> AttemptAwareServer, AgentLightningClient -> AttemptAwareClient" in line
    assert "max_claims=3" in line and "api_key: set" in line and "s3cret" not in unconfigured
    assert "lightning_attempts.environment|INFO|" + line.partition(": ")[2] in configured.splitlines()


@pytest.mark.once
def test_the_report_never_breaks_a_process_that_did_not_ask_for_the_switch(tmp_path: Path) -> None:
    """E.g. agentlightning 1.0, where importing lightning_attempts fails: the switch is off, agentlightning works."""
    (tmp_path / "lightning_attempts").mkdir()
    (tmp_path / "lightning_attempts" / "__init__.py").write_text("raise ImportError('unsupported here')\n")
    done = run_python_whole(UPSTREAM_CLASSES, PYTHONPATH=str(tmp_path), LIGHTNING_ATTEMPTS_INSTAL="1")
    assert json.loads(done.stdout) == ["agentlightning.server", False]
    assert "cannot check them: unsupported here" in done.stderr


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
def test_switched_off_values(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SWITCH, value)
    assert not switched_on()
    monkeypatch.setenv(SWITCH, "1")
    assert switched_on()


def test_set_it_imports_nothing_into_a_process_that_never_uses_agentlightning() -> None:
    report = run_python(
        """
        import json, sys
        import email.message  # any import passes the hook
        print(json.dumps([name for name in ("agentlightning", "lightning_attempts") if name in sys.modules]))
        """,
        **{SWITCH: "1"},
    )
    assert report == []


def test_set_it_installs_when_agentlightning_is_imported_with_the_options() -> None:
    report = run_python(
        "from agentlightning import AgentLightningServer\n" + REPORT,  # what verl's daemon does
        **{
            SWITCH: "1",
            "LIGHTNING_ATTEMPTS_STALE_POLICY": "salvage",
            "LIGHTNING_ATTEMPTS_MAX_CLAIMS": "3",
            "LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS": "7.5",
        },
    )
    assert report["server"] and report["client"]
    assert report["options"] == {"stale_policy": "salvage", "max_claims": 3, "unresponsive_seconds": 7.5}
    assert report["heavy"] == []


def test_set_it_installs_when_lightning_attempts_imports_agentlightning_first() -> None:
    report = run_python("import lightning_attempts\n" + REPORT, **{SWITCH: "1"})
    assert report["server"] and report["client"] and report["heavy"] == []
    assert report["options"] == {
        "stale_policy": "reject",
        "max_claims": SWITCH_DEFAULTS["max_claims"],
        "unresponsive_seconds": LEASE_SECONDS,
    }


def test_with_the_switch_on_a_misspelt_option_fails_the_import_loudly() -> None:
    """Better no training than training without the options asked for."""
    done = prewarmed.run(
        [sys.executable, "-c", "import agentlightning"],
        env=environment(**{SWITCH: "1", "LIGHTNING_ATTEMPTS_STALE_POLCY": "salvage"}),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode != 0
    message = "LIGHTNING_ATTEMPTS_STALE_POLCY is not a lightning_attempts variable. Did you mean "
    message += "LIGHTNING_ATTEMPTS_STALE_POLICY?"
    assert message in done.stderr, done.stderr


def test_install_keeps_the_options_the_switch_applied() -> None:
    """Guide section 2 tells some launch styles to call install() too: it must not reset the options."""
    report = run_python(
        """
        import json
        import agentlightning, lightning_attempts
        claims = [agentlightning.AgentLightningServer(port=0).max_claims]
        lightning_attempts.install()
        claims.append(agentlightning.AgentLightningServer(port=0).max_claims)
        lightning_attempts.install(max_claims=5)  # an explicit argument wins over the variable
        claims.append(agentlightning.AgentLightningServer(port=0).max_claims)
        claims.append(agentlightning.AgentLightningServer(port=0, max_claims=7).max_claims)
        claims.append(lightning_attempts.AttemptAwareServer(port=0).max_claims)  # built directly: no variable
        print(json.dumps(claims))
        """,
        **{SWITCH: "1", "LIGHTNING_ATTEMPTS_MAX_CLAIMS": "3"},
    )
    assert report == [3, 3, 5, 7, None]


REIMPORT = """
import json
failures = []
for _ in range(3):  # a re-run notebook cell, a caught exception, pytest collecting the next module
    try:
        import agentlightning
        failures.append(None)
    except Exception as error:
        failures.append(f"{type(error).__name__}: {error}")
import lightning_attempts  # the package itself imports: it checks the release only
print(json.dumps(failures))
"""


def test_with_the_switch_on_every_import_fails_the_same_way_until_the_value_is_fixed() -> None:
    failures = run_python(REIMPORT, **{SWITCH: "1", "LIGHTNING_ATTEMPTS_MAX_CLAIMS": "0"})
    assert len(set(failures)) == 1 and failures[0] is not None, failures
    assert failures[0].startswith("OptionError: LIGHTNING_ATTEMPTS_MAX_CLAIMS is not a valid value: max_claims")


def test_options_parse_from_strings() -> None:
    parsed = from_variables(
        {
            "LIGHTNING_ATTEMPTS_STALE_POLICY": "salvage",
            "LIGHTNING_ATTEMPTS_REQUIRE_ATTEMPT_ID": "true",
            "LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS": "60",
            "LIGHTNING_ATTEMPTS_MAX_CLAIMS": "none",
            "LIGHTNING_ATTEMPTS_MAX_BODY_BYTES": "",
            "OTHER": "ignored",
        }
    )
    assert parsed == {
        "stale_policy": "salvage",
        "require_attempt_id": True,
        "unresponsive_seconds": 60.0,
        "max_claims": None,
        "max_body_bytes": None,
    }
    with pytest.raises(ValueError, match="LIGHTNING_ATTEMPTS_STALE_POLICY is not a valid value"):
        from_variables({"LIGHTNING_ATTEMPTS_STALE_POLICY": "keep"})
    with pytest.raises(ValueError, match="LIGHTNING_ATTEMPTS_MAX_REMEMBERED is not a valid value"):
        from_variables({"LIGHTNING_ATTEMPTS_MAX_REMEMBERED": "none"})  # not optional
    with pytest.raises(ValueError, match="LIGHTNING_ATTEMPTS_MAX_CLAIMS is not a valid value"):
        from_variables({"LIGHTNING_ATTEMPTS_MAX_CLAIMS": "three"})
    with pytest.raises(ValueError, match="LIGHTNING_ATTEMPTS_MAX_CLAIMS is not a valid value: max_claims must be"):
        from_variables({"LIGHTNING_ATTEMPTS_MAX_CLAIMS": "0"})  # out of range: found on import, not at start
    with pytest.raises(ValueError, match="LIGHTNING_ATTEMPTS_API_KEY is not a valid value: api_key must be"):
        from_variables({"LIGHTNING_ATTEMPTS_API_KEY": "has space"})


def test_unrecognised_variables_come_with_the_likely_intended_name() -> None:
    assert unrecognised(
        {SWITCH: "1", "LIGHTNING_ATTEMPTS_INSTAL": "1", "LIGHTNING_ATTEMPTS_APIKEY": "k", "LIGHTNING_ATTEMPTS_ZZZ": "1"}
    ) == {
        "LIGHTNING_ATTEMPTS_APIKEY": "LIGHTNING_ATTEMPTS_API_KEY",
        "LIGHTNING_ATTEMPTS_INSTAL": "LIGHTNING_ATTEMPTS_INSTALL",
        "LIGHTNING_ATTEMPTS_ZZZ": None,
    }


def test_precedence_explicit_then_variable_then_agl_key_then_default() -> None:
    environ = {"LIGHTNING_ATTEMPTS_MAX_CLAIMS": "3", "LIGHTNING_ATTEMPTS_API_KEY": "variable", "AGL_KEY": "agl"}
    defaults = dict(SWITCH_DEFAULTS)  # the switch's: leases on, a task budget, max claims
    assert resolve(environ=environ) == {**defaults, "max_claims": 3, "api_key": "variable"}
    explicit = {"max_claims": 5, "api_key": "explicit"}
    assert resolve(explicit, environ=environ) == {**defaults, **explicit}
    assert resolve(environ={"AGL_KEY": "agl"}) == {**defaults, "api_key": "agl"}
    assert resolve(environ={"AGL_KEY": ""}) == defaults  # empty: no key, as agentlightning 1.0 reads it
    assert resolve({"max_claims": None}, environ=environ)["max_claims"] is None  # an explicit None is explicit


def test_leases_are_on_where_the_switch_puts_the_server_and_can_be_turned_off() -> None:
    assert LEASE_SECONDS <= 60
    assert resolve(environ={})["unresponsive_seconds"] == LEASE_SECONDS
    assert resolve(environ={"LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS": "none"})["unresponsive_seconds"] is None
    assert resolve(environ={"LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS": "20"})["unresponsive_seconds"] == 20.0
    assert (
        resolve({"unresponsive_seconds": None}, environ={})["unresponsive_seconds"] is None
    )  # install(unresponsive_seconds=None)
    assert AttemptAwareServer(port=0).options.unresponsive_seconds is None  # built directly: its own default


def test_every_keyword_option_of_the_server_has_a_variable() -> None:
    keyword_only = set(ServerArguments.__annotations__) - {"clock"}
    assert set(option_variables().values()) == keyword_only == {name for name, _ in settable()}
    assert option_variables()["LIGHTNING_ATTEMPTS_STALE_POLICY"] == "stale_policy"


def test_activate_is_a_no_op_when_off(caplog: pytest.LogCaptureFixture) -> None:
    assert activate({}) is False
    assert not caplog.records
    assert activate({SWITCH: "0", "LIGHTNING_ATTEMPTS_BOGUS": "x"}) is False
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "LIGHTNING_ATTEMPTS_BOGUS is not a lightning_attempts variable"
    ]


SPAWN_AND_FORK = """
import json, multiprocessing

def probe(queue):
    import agentlightning
    from lightning_attempts import AttemptAwareServer
    queue.put(issubclass(agentlightning.AgentLightningServer, AttemptAwareServer))

if __name__ == "__main__":
    results = {}
    for method in ("spawn", "fork"):  # the fork inherits: agentlightning is imported here first
        if method == "fork":
            import agentlightning
        context = multiprocessing.get_context(method)
        queue = context.Queue()
        process = context.Process(target=probe, args=(queue,))
        process.start()
        results[method] = queue.get(timeout=120)
        process.join(60)
    print(json.dumps(results))
"""


@pytest.mark.timeout(300)
def test_it_reaches_spawned_and_forked_workers(tmp_path: Path) -> None:
    """Subprocesses: every other test here runs one, with the variable in its environment only."""
    script = tmp_path / "workers.py"  # spawn re-imports the main module: it must be a file
    script.write_text(SPAWN_AND_FORK)
    done = prewarmed.run(
        [sys.executable, str(script)], env=environment(**{SWITCH: "1"}), capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"spawn": True, "fork": True}


def test_editable_install_carries_the_hook() -> None:
    """This venv is an editable install (as CI's are): the hook's files are in site-packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    assert (site / "lightning_attempts_install.pth").read_text().startswith("import os;")
    assert (site / "_lightning_attempts_startup.py").exists()


@pytest.mark.once
@pytest.mark.timeout(600)
def test_wheel_install_carries_the_hook(tmp_path: Path) -> None:
    uv = [sys.executable, "-m", "uv"]
    built = subprocess.run(
        [*uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:  # README: installed beside 1.0, it downgrades agentlightning to 0.3.0
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: agentlightning<1.0,>=0.1" in metadata.splitlines()
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([*uv, "venv", "--quiet", "--python", base, str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    installed = subprocess.run(
        [*uv, "pip", "install", "--quiet", "--python", python, str(wheel), f"agentlightning=={AGENTLIGHTNING_VERSION}"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert installed.returncode == 0, installed.stderr
    report = run_python(REPORT, python=python, **{SWITCH: "1", "LIGHTNING_ATTEMPTS_MAX_CLAIMS": "2"})
    assert report["server"] and report["client"] and report["options"]["max_claims"] == 2
    unset = run_python(
        "import json, sys; import agentlightning; print(json.dumps('lightning_attempts' in sys.modules))",
        python=python,
    )
    assert unset is False


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_a_switch_that_is_neither_on_nor_off_is_refused_naming_it(value: str) -> None:
    with pytest.raises(OptionError, match=f"LIGHTNING_ATTEMPTS_INSTALL is not a valid value: {value!r}"):
        activate({SWITCH: value})


@pytest.mark.parametrize("value", ["1", "true", "Yes", " on ", "0", "false", "NO", "off", ""])
def test_the_switchs_documented_spellings_are_taken(value: str) -> None:
    assert activate({SWITCH: value}) is (value.strip().lower() in ("1", "true", "yes", "on"))
    lightning_attempts.uninstall()
