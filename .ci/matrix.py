#!/usr/bin/env python3
"""Run the test suite in tiers: every supported agentlightning release, extra Pythons, and verl.

Each tier gets its own virtual environment under ``.venvs/<tier>`` (kept between runs; uv's
cache makes a rebuild take seconds) with the project installed editable, and runs pytest there:

- ``releases``: the seven releases on Python 3.11, ``tests/`` without ``tests/verl/``;
- ``pythons``: 0.1.2 on 3.10, 0.2.2 on 3.12, 0.3.0 on 3.13, the same tests;
- ``verl``: 0.1.2 + verl 0.5.0 and 0.3.0 + verl 0.6.1 on 3.11 with a CPU build of torch,
  ``tests/verl/`` (the real AgentModeDaemon, Ray). torch comes from pip, not uv: pip's
  configuration on these machines finds ``torch-2.13.0+cpu`` on disk, where uv (and a plain
  ``torch``) would download a CUDA build of several GB.

Two tiers run at a time (``--jobs``; a tier alone keeps one of two cores busy about half the
time), each tier's output printed whole when it ends. Tests marked ``once`` (slow, and not about
the release: the benchmark's smoke run, a wheel built and installed) run in the 0.1.2 and 0.3.0
tiers only. A tier whose environment cannot be built fails, saying which step and what is
missing. Prints each run, then a table of tier against result, and exits non-zero if any tier
fails or runs no test. Standard library only: it runs before any venv exists.

    python3 .ci/matrix.py                                      # every tier
    python3 .ci/matrix.py --tiers verl                         # one group (releases, pythons, verl)
    python3 .ci/matrix.py --tiers verl-0.3.0,py3.12-0.2.2      # tiers by name
    python3 .ci/matrix.py --releases 0.1.2,0.3.0 -- -k store   # release tiers, with pytest arguments
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
RELEASES = ("0.1", "0.1.1", "0.1.2", "0.2.0", "0.2.1", "0.2.2", "0.3.0")
PYTHON = "3.11"
COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")
SUITE = ("tests", "--ignore=tests/verl")
TORCH = "torch==2.13.0"
# The verl tier's test requirements, not the test extra: schemathesis (only the HTTP fuzz tests
# use it) needs rich>=13.9.4, which litellm[proxy] of 0.3.0's era pins to 13.7.1.
VERL_TEST_REQUIREMENTS = ("pytest>=8", "pytest-timeout>=2.2", "pytest-asyncio>=0.23", "psutil>=5.9")


@dataclass(frozen=True)
class Tier:
    name: str
    group: str
    release: str
    python: str = PYTHON
    paths: tuple[str, ...] = SUITE
    requirements: tuple[str, ...] = ("-e", f"{ROOT}[test]")
    exclude_newer: str | None = None
    torch: str | None = None
    once: bool = False
    """Whether this tier runs the tests marked ``once`` (slow, and not about the release or the Python)."""


def _verl(release: str, verl: str, exclude_newer: str, *extra: str) -> Tier:
    requirements = ("-e", str(ROOT), *VERL_TEST_REQUIREMENTS, f"verl=={verl}", *extra)
    return Tier(
        f"verl-{release}", "verl", release, paths=("tests/verl",), requirements=requirements,
        exclude_newer=exclude_newer, torch=TORCH,
    )  # fmt: skip


TIERS: tuple[Tier, ...] = (
    *(Tier(release, "releases", release, once=release in ("0.1.2", "0.3.0")) for release in RELEASES),
    Tier("py3.10-0.1.2", "pythons", "0.1.2", python="3.10"),
    Tier("py3.12-0.2.2", "pythons", "0.2.2", python="3.12"),
    Tier("py3.13-0.3.0", "pythons", "0.3.0", python="3.13"),
    # 0.1.2's daemon imports openai without declaring it. Newer pins do not resolve together
    # (pyarrow against numpy<2, transformers 5); 0.2.2 + verl 0.6.1 resolves with 2025-11-20.
    # It also imports agentops.sdk (agentops 0.4+) but declares only agentops<=0.4.18: beside
    # verl, uv may otherwise settle on agentops 0.3.x (seen on a fresh venv).
    _verl("0.1.2", "0.5.0", "2025-08-20", "openai", "agentops>=0.4"),
    _verl("0.3.0", "0.6.1", "2026-01-05"),
)
GROUPS = ("releases", "pythons", "verl")
LONGEST_FIRST = ("verl-0.3.0", "0.3.0", "py3.13-0.3.0", "py3.12-0.2.2", "0.2.2", "0.2.1", "0.2.0", "verl-0.1.2")
"""Start order when tiers run side by side (measured durations), so that no long tier starts last."""


class InstallError(Exception):
    """A tier's environment could not be built; the message says which step and why."""


@dataclass
class Result:
    tier: Tier
    exit_code: int
    counts: dict[str, int]
    seconds: float
    install_seconds: float
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.exit_code == 0 and self.counts.get("passed", 0) > 0


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "uv"], check=True)
        found = shutil.which("uv")
    if found is None:
        sys.exit("matrix: could not install uv")
    return found


def interpreter(version: str) -> str:
    """pyenv's interpreter for ``version`` when there is one (uv cannot download one here), else the version."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return version
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
    candidates = sorted(Path(root).glob(f"versions/{version}.*/bin/python{version}")) if root else []
    return str(candidates[-1]) if candidates else version


def step(description: str, command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = "\n".join(line for line in (done.stderr + done.stdout).splitlines() if line.strip())[-3000:]
        raise InstallError(f"{description} failed (exit {done.returncode}):\n{detail}")


def installed_version(python: Path, distribution: str) -> str | None:
    done = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({distribution!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def prepare(tier: Tier) -> Path:
    """The tier's virtual environment, with the project (editable) and the tier's requirements."""
    venv = ROOT / ".venvs" / tier.name
    python = venv / "bin" / "python"
    if not python.exists():
        step(
            f"creating {venv} with Python {tier.python}",
            [uv(), "venv", "--quiet", "--python", interpreter(tier.python), str(venv)],
        )
    if tier.torch is not None:
        wanted = tier.torch.partition("==")[2]
        if (installed_version(python, "torch") or "").partition("+")[0] != wanted:
            step(f"installing pip into {venv}", [uv(), "pip", "install", "--quiet", "--python", str(python), "pip"])
            step(
                f"installing {tier.torch} with pip (it should take the CPU build, e.g. from /opt/wheels)",
                [str(python), "-m", "pip", "install", "--quiet", tier.torch],
            )
    # Reinstalled every time: an editable install copies the switch's .pth hook into site-packages.
    command = [uv(), "pip", "install", "--quiet", "--python", str(python), "--reinstall-package", "lightning-attempts"]
    if tier.exclude_newer:
        command += ["--exclude-newer", tier.exclude_newer]
    step(
        f"installing agentlightning=={tier.release} and {' '.join(tier.requirements)}",
        [*command, *tier.requirements, f"agentlightning=={tier.release}"],
    )
    return python


def paths_given(pytest_args: list[str]) -> bool:
    return any(not arg.startswith("-") and (ROOT / arg.split("::")[0]).exists() for arg in pytest_args)


def run(tier: Tier, pytest_args: list[str], out: TextIO) -> Result:
    """Build the tier's venv and run its tests, writing everything to ``out``."""
    print(f"\n=== {tier.name}: agentlightning {tier.release}, Python {tier.python} ===", file=out, flush=True)
    started = time.monotonic()
    try:
        python = prepare(tier)
    except InstallError as error:
        seconds = time.monotonic() - started
        print(f"matrix: {tier.name}: {error}", file=out, flush=True)
        return Result(tier, 1, {}, seconds, seconds, problem=str(error).splitlines()[0])
    installed = time.monotonic() - started
    print(f"(environment ready in {installed:.0f}s)", file=out, flush=True)
    # The tier's own paths unless the arguments name some; --ignore options stay either way.
    paths = [p for p in tier.paths if p.startswith("-")] if paths_given(pytest_args) else list(tier.paths)
    if not tier.once and "-m" not in pytest_args:
        paths += ["-m", "not once"]
    environment = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    process = subprocess.Popen(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", *paths, *pytest_args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    last = ""
    for line in process.stdout:
        out.write(line)
        if line.strip():
            last = line
    exit_code = process.wait()
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in COUNTS.findall(last)}
    return Result(tier, exit_code, counts, time.monotonic() - started, installed)


def run_all(tiers: list[Tier], pytest_args: list[str], jobs: int) -> list[Result]:
    """Run the tiers, ``jobs`` at a time, longest first; print each tier's output whole as it ends."""
    if jobs == 1:
        return [run(tier, pytest_args, sys.stdout) for tier in tiers]
    printing = threading.Lock()

    def run_buffered(tier: Tier) -> Result:
        with tempfile.TemporaryFile("w+") as out:
            result = run(tier, pytest_args, out)
            out.seek(0)
            with printing:
                shutil.copyfileobj(out, sys.stdout)
                sys.stdout.flush()
        return result

    ordered = sorted(tiers, key=lambda tier: LONGEST_FIRST.index(tier.name) if tier.name in LONGEST_FIRST else 99)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = dict(zip(ordered, pool.map(run_buffered, ordered), strict=True))
    return [done[tier] for tier in tiers]


def verdict(result: Result) -> str:
    if result.problem is not None:
        return f"FAILED: {result.problem}"
    if result.ok:
        return "ok"
    return "no tests" if result.exit_code == 5 else f"FAILED (exit {result.exit_code})"


def table(results: list[Result]) -> str:
    rows = [
        "| tier | agentlightning | python | result | passed | failed | skipped | install s | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        failed = r.counts.get("failed", 0) + r.counts.get("error", 0)
        rows.append(
            f"| {r.tier.name} | {r.tier.release} | {r.tier.python} | {verdict(r)} | {r.counts.get('passed', 0)} "
            f"| {failed} | {r.counts.get('skipped', 0)} | {r.install_seconds:.0f} | {r.seconds:.0f} |"
        )
    return "\n".join(rows)


def select(parser: argparse.ArgumentParser, tiers_option: str | None, releases_option: str | None) -> list[Tier]:
    releases = [r.strip() for r in (releases_option or ",".join(RELEASES)).split(",") if r.strip()]
    unknown = sorted(set(releases) - set(RELEASES))
    if unknown:
        parser.error(f"unsupported releases: {', '.join(unknown)} (supported: {', '.join(RELEASES)})")
    # --releases alone keeps its old meaning: those releases on 3.11.
    names = [n.strip() for n in (tiers_option or ("releases" if releases_option else ",".join(GROUPS))).split(",")]
    known = {tier.name for tier in TIERS}
    bad = [n for n in names if n and n not in GROUPS and n not in known]
    if bad:
        parser.error(
            f"unknown tiers: {', '.join(bad)} (groups: {', '.join(GROUPS)}; tiers: {', '.join(sorted(known))})"
        )
    chosen = [t for t in TIERS if (t.group in names or t.name in names) and t.release in releases]
    if not chosen:
        parser.error("no tier matches the selection")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", help=f"comma-separated groups ({', '.join(GROUPS)}) or tier names; default all")
    parser.add_argument("--releases", help="comma-separated agentlightning releases (alone: the 3.11 release tiers)")
    parser.add_argument(
        "--jobs", type=int, default=2, help="tiers run at once (default 2: a tier leaves a core idle half the time)"
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    options = parser.parse_args()
    tiers = select(parser, options.tiers, options.releases)
    started = time.monotonic()
    results = run_all(tiers, options.pytest_args, max(options.jobs, 1))
    print("\n" + table(results))
    passed = sum(r.counts.get("passed", 0) for r in results)
    failed = sum(r.counts.get("failed", 0) + r.counts.get("error", 0) for r in results)
    print(f"\nmatrix of {len(results)} tiers in {time.monotonic() - started:.0f}s")
    print(f"total: {passed} passed, {failed} failed")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
