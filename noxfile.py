"""The test tiers: the suite against every supported agentlightning release, on extra Pythons, and with verl.

Each tier is a nox session with its own virtual environment under ``.venvs/`` (kept between runs; uv's
cache makes a rebuild take seconds), the project installed editable, and pytest run there:

- ``tests(<release>)``, tag ``releases``: 0.1, 0.1.1, 0.2.0, 0.2.1 and 0.3.0 on Python 3.11, ``tests/`` without
  ``tests/verl/``, and ``tests(once)``: the slow tests about neither release nor Python, on 0.3.0, once a run;
- ``tests(py<python>-<release>)``, tag ``pythons``: 0.1.2 on 3.10, 0.2.2 on 3.12, 0.3.0 on 3.13, the same tests;
- ``verl(<release>)``, tag ``verl``: 0.1.2 + verl 0.5.0 and 0.3.0 + verl 0.6.1 on 3.11 with a CPU build of
  torch, ``tests/verl/`` (the real AgentModeDaemon, Ray). torch comes from pip, not uv: pip's configuration on
  these machines finds ``torch-2.13.0+cpu`` on disk, where uv (and a plain ``torch``) would download a CUDA
  build of several GB.

Which tests a ``tests`` tier runs is ``tests/scopes.py``'s: every tier runs what can differ by release or Python,
the oldest and newest release (0.1, 0.3.0) and the other Pythons the project's own logic too, the releases in
between only what a release can change, and ``tests(once)`` the slow ``once`` tests. Child interpreters come
from a fork server that has imported agentlightning's third-party modules once (``tests/prewarmed.py``). Four
tiers run at a time (nox's ``--parallel``, set below). Measured on clean clones on 2 cores: 57 minutes and about
100 CPU-minutes three at a time before the scopes and the fork server (each child importing agentlightning
afresh, 6 s of CPU on 0.2+); 25 minutes (1,515 s and 1,525 s) and 37 to 38 CPU-minutes four at a time after, the
machine 1.5 of its 2 cores busy on average; 27 minutes (1,638 s) with the liveness tests added since, the
``once`` tests then in both the 0.1 and the 0.3.0 tier and 0.1.2 and 0.2.2 on 3.11 too; with them apart, 27
minutes (``.ci/run`` 1,718 s) on 2026-12-07, issue 36's tests added, no tier over 13. Each tier's output is
printed whole when it ends, then a table of tier against result. A tier fails when its environment cannot be
built (nox prints the failing command and its output), when pytest fails or collects nothing (exit 5), or when
no test passed.

    python3 -m pip install 'nox[uv]>=2026.10.20' && python3 -m nox  # every tier (README's test command)
    nox -s 'tests(0.3.0)' -- -x                               # one tier; anything after -- goes to pytest
    nox -t verl                                               # a group of tiers: releases, pythons, verl
    nox -s 'tests(0.1.1)' 'tests(py3.10-0.1.2)' -- -k store   # the tiers named
    nox -l                                                    # the tiers
    nox -j 1 -s 'tests(0.3.0)'                                # one at a time, output as it comes
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import nox

sys.path.insert(0, str(Path(__file__).resolve().parent))  # nox loads this file without its folder on the path
from tests.scopes import TIERS

# --parallel came with nox 2026.8.10; this noxfile was tried with 2026.10.20.
nox.needs_version = ">=2026.10.20"
nox.options.default_venv_backend = "uv"
nox.options.envdir = ".venvs"
nox.options.reuse_venv = "yes"
nox.options.parallel = 4
# Otherwise nox skips a tier whose Python it cannot find (and passes) unless CI is set.
nox.options.error_on_missing_interpreters = True
# uv cannot download interpreters here: say "not found" at once rather than after a failed download.
nox.options.download_python = "never"

ROOT = Path(__file__).resolve().parent
PYTHON = "3.11"
SUITE = ("tests", "--ignore=tests/verl")
TORCH = "torch==2.13.0"
# Installs compile bytecode: the suite's subprocesses import agentlightning afresh, and where
# PYTHONDONTWRITEBYTECODE is set (as on the CI machine) nothing else writes it. Measured on 0.3.0:
# `import agentlightning` 21 s without, 10 s with.
INSTALL_ENV = {"UV_COMPILE_BYTECODE": "1"}
# The verl tier's test requirements, not the test extra: schemathesis (only the HTTP fuzz tests
# use it) needs rich>=13.9.4, which litellm[proxy] of 0.3.0's era pins to 13.7.1.
VERL_TEST_REQUIREMENTS = ("pytest>=8", "pytest-timeout>=2.2", "pytest-asyncio>=0.23", "psutil>=5.9")


@functools.cache
def interpreter(version: str) -> str:
    """pyenv's interpreter for ``version`` when there is one (uv cannot download one here), else the version.

    pyenv's shims answer only for its active versions, so neither nox nor uv finds 3.10, 3.12 or 3.13 by name.
    """
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return version
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
    candidates = sorted(Path(root).glob(f"versions/{version}.*/bin/python{version}")) if root else []
    return str(candidates[-1]) if candidates else version


def names_paths(pytest_args: list[str]) -> bool:
    return any(not arg.startswith("-") and (ROOT / arg.split("::")[0]).exists() for arg in pytest_args)


def run_pytest(session: nox.Session, paths: tuple[str, ...], *, marks: list[str]) -> None:
    """Run the tier's tests, or the paths among the session's arguments; fail when no test passed."""
    arguments = list(session.posargs)
    # The tier's own paths unless the arguments name some; --ignore options stay either way.
    selected = [p for p in paths if p.startswith("-")] if names_paths(arguments) else list(paths)
    # marks before the arguments, so that a -m among them wins.
    # Not in session.create_tmp(): that points TMPDIR into the venv, where Ray refuses its temp_dir.
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "junit.xml"
        session.run(
            "python", "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}", *selected, *marks, *arguments,
            env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        )  # fmt: skip
        if "--co" in arguments or "--collect-only" in arguments or not report.exists():
            return
        suites = list(ElementTree.parse(report).getroot().iter("testsuite"))
    counts = {
        key: sum(int(suite.get(key, "0")) for suite in suites) for key in ("tests", "failures", "errors", "skipped")
    }
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if passed <= 0:
        session.error(f"no test passed ({counts['tests']} run, {counts['skipped']} skipped)")


# Longest first (measured), so that no long tier starts last: the verl tiers, then the release tiers.
@nox.session(allow_parallel=True)
@nox.parametrize(
    ("python", "release", "verl", "exclude_newer", "extra"),
    [
        nox.param(interpreter(PYTHON), "0.3.0", "0.6.1", "2026-01-05", (), id="0.3.0", tags=["verl"]),
        # 0.1.2's daemon imports openai without declaring it. Newer pins do not resolve together
        # (pyarrow against numpy<2, transformers 5); 0.2.2 + verl 0.6.1 resolves with 2025-11-20.
        # It also imports agentops.sdk (agentops 0.4+) but declares only agentops<=0.4.18: beside
        # verl, uv may otherwise settle on agentops 0.3.x (seen on a fresh venv).
        nox.param(
            interpreter(PYTHON), "0.1.2", "0.5.0", "2025-08-20", ("openai", "agentops>=0.4"), id="0.1.2", tags=["verl"]
        ),
    ],
)
def verl(session: nox.Session, release: str, verl: str, exclude_newer: str, extra: tuple[str, ...]) -> None:
    """verl's real AgentModeDaemon and Ray against a release, with a CPU build of torch (``tests/verl/``)."""
    # torch first, with pip (see the module's docstring); a no-op once it is there.
    session.install("pip")
    session.run("python", "-m", "pip", "install", "--quiet", TORCH)
    # Reinstalled every time: an editable install copies the switch's .pth hook into site-packages.
    session.install(
        "--reinstall-package", "lightning-attempts", "--exclude-newer", exclude_newer,
        "-e", ".", *VERL_TEST_REQUIREMENTS, f"verl=={verl}", *extra, f"agentlightning=={release}",
        env=INSTALL_ENV,
    )  # fmt: skip
    run_pytest(session, ("tests/verl",), marks=[])


# tests/scopes.py: which tiers there are, and which scopes of tests (release, own_logic, once) each runs.
@nox.session(allow_parallel=True)
@nox.parametrize(
    ("python", "name"),
    [
        nox.param(interpreter(t.python), name, id=name, tags=["releases" if t.python == PYTHON else "pythons"])
        for name, t in TIERS.items()
    ],
)
def tests(session: nox.Session, name: str) -> None:
    """The suite without ``tests/verl/`` against a release of agentlightning, the scopes the tier runs."""
    tier = TIERS[name]
    # Reinstalled every time: an editable install copies the switch's .pth hook into site-packages.
    session.install(
        "--reinstall-package", "lightning-attempts", "-e", ".[test]", f"agentlightning=={tier.release}", env=INSTALL_ENV
    )
    run_pytest(session, SUITE, marks=tier.deselect())
