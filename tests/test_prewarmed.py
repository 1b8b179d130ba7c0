"""A child forked from the fork server (tests/prewarmed.py) starts as a fresh interpreter does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import prewarmed

REPORT = """
import json, os, sys
print(json.dumps({
    "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__,
    "variable": os.environ.get("LIGHTNING_ATTEMPTS_INSTALL"),
    "armed": "_lightning_attempts_startup" in sys.modules,
    "ours": [m for m in sys.modules if m.startswith(("agentlightning", "lightning_attempts"))],
}))
"""


Done = subprocess.CompletedProcess[str]


def both(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[Done, Done]:
    """The same command forked from the server and started afresh: what each printed and how it ended."""
    forked = prewarmed.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    fresh = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    return forked, fresh


@pytest.mark.parametrize("switch", [None, "1"], ids=["switch-unset", "switch-on"])
@pytest.mark.parametrize("kind", ["-c", "-m", "script"])
def test_a_child_sees_what_a_fresh_interpreter_sees(kind: str, switch: str | None, tmp_path: Path) -> None:
    (tmp_path / "report.py").write_text(REPORT)
    command = {"-c": ["-c", REPORT], "-m": ["-m", "report"], "script": [str(tmp_path / "report.py")]}[kind]
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_ATTEMPTS_INSTALL"}
    if switch:
        env["LIGHTNING_ATTEMPTS_INSTALL"] = switch
    args = [sys.executable, *command, "an-argument"]
    assert isinstance(prewarmed.popen(args, env=env, stdout=subprocess.DEVNULL), prewarmed.ForkedProcess)
    forked, fresh = both(args, env=env, cwd=tmp_path)
    assert (forked.returncode, forked.stderr) == (fresh.returncode, fresh.stderr) == (0, "")
    assert json.loads(forked.stdout) == json.loads(fresh.stdout)


@pytest.mark.parametrize(
    ("code", "returncode"),
    [
        ("raise SystemExit(3)", 3),
        ("1 / 0", 1),
        ("raise KeyboardInterrupt", -2),  # an interpreter ends itself with SIGINT
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -15),
        ("import atexit, sys; atexit.register(print, 'at exit'); sys.stdout.write('ran ')", 0),
    ],
)
def test_a_child_ends_as_a_fresh_interpreter_does(code: str, returncode: int) -> None:
    forked, fresh = both([sys.executable, "-c", code])
    assert forked.returncode == fresh.returncode == returncode
    assert forked.stdout == fresh.stdout
    assert forked.stderr.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]


def test_what_acts_at_start_up_gets_a_fresh_interpreter(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    process = prewarmed.popen([sys.executable, "-c", "pass"], env=env)
    assert type(process) is subprocess.Popen and process.wait(timeout=60) == 0
    process = prewarmed.popen([sys.executable, "-X", "importtime", "-c", "pass"], stderr=subprocess.DEVNULL)
    assert type(process) is subprocess.Popen and process.wait(timeout=60) == 0
