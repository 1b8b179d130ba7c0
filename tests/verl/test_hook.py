"""verl's ``AgentModeDaemon`` is rebound wherever agentlightning bound it, by the switch and by ``install()``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from .processes import ROOT, environment

OURS = "lightning_attempts.verl.daemon.AttemptAwareDaemon"
UPSTREAM = "agentlightning.verl.daemon.AgentModeDaemon"

REPORT = """
import inspect, json, sys
import lightning_attempts

def bindings():
    return sorted({f"{c.__module__}.{c.__qualname__}" for name, module in list(sys.modules.items())
                   if name.partition(".")[0] == "agentlightning" and (c := vars(module).get("AgentModeDaemon"))})

def where():
    return sorted(name for name, module in list(sys.modules.items())
                  if name.partition(".")[0] == "agentlightning" and "AgentModeDaemon" in vars(module))

import agentlightning.verl  # its package imports the trainer and the daemon, as run_ppo's driver does
report = {"first": bindings(), "where": where()}
report["parameters"] = list(inspect.signature(sys.modules["agentlightning.verl.daemon"].AgentModeDaemon).parameters)
lightning_attempts.install()
report["installed"] = bindings()
lightning_attempts.uninstall()
report["uninstalled"] = bindings()

# Built directly, without install(): its server is still ours, with the options the switch would give it.
from lightning_attempts.verl.daemon import AttemptAwareDaemon
options = dict(port=0, train_rollout_n=1, train_information={}, tokenizer=None, mini_batch_size=1, pad_token_id=0,
               llm_timeout_seconds=77)
if "mode" in inspect.signature(AttemptAwareDaemon).parameters:
    options["mode"] = "v0"
server = AttemptAwareDaemon(**options).server
report["direct"] = [type(server).__name__, server.max_claims, server._task_timeout_seconds, server.unresponsive_seconds]
print(json.dumps(report))
"""


def run(*, switch: bool) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(REPORT)],
        env=environment(switch, LIGHTNING_ATTEMPTS_MAX_CLAIMS="3"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_the_daemon_is_rebound_in_every_module_that_bound_it() -> None:
    """One interpreter (importing verl takes a while): the switch's import hook, then ``install()`` once imported."""
    report = run(switch=True)
    assert {"agentlightning.verl", "agentlightning.verl.daemon", "agentlightning.verl.trainer"} <= set(report["where"])
    assert report["first"] == [OURS], report
    assert report["installed"] == [OURS], report  # already imported: install() rebinds it where it is bound
    assert report["uninstalled"] == [UPSTREAM], report
    # The variable read, the daemon's timeout kept, leases on as the switch's default.
    assert report["direct"] == ["AttemptAwareServer", 3, 77, 60.0], report
    assert report["parameters"][:6] == [
        "port", "train_rollout_n", "train_information", "tokenizer", "mini_batch_size", "pad_token_id",
    ]  # fmt: skip
