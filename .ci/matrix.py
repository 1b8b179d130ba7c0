#!/usr/bin/env python3
"""Run the whole test suite against every supported agentlightning release.

Each release gets its own virtual environment under ``.venvs/<release>`` (kept between
runs; uv's cache makes a cold build take seconds), with the project and its test extra
installed. Prints each run, then a table of release against result, and exits non-zero
if any release fails or runs no test. Standard library only: it runs before any venv exists.

    python3 .ci/matrix.py                       # all seven releases
    python3 .ci/matrix.py --releases 0.1.2,0.3.0 -- -k store   # some, with pytest arguments
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASES = ("0.1", "0.1.1", "0.1.2", "0.2.0", "0.2.1", "0.2.2", "0.3.0")
PYTHON = "3.11"
COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")


@dataclass
class Result:
    release: str
    exit_code: int
    counts: dict[str, int]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.counts.get("passed", 0) > 0


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "uv"], check=True)
        found = shutil.which("uv")
    if found is None:
        sys.exit("matrix: could not install uv")
    return found


def prepare(release: str) -> Path:
    """The release's virtual environment, with the project (editable) and its test extra."""
    venv = ROOT / ".venvs" / release
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([uv(), "venv", "--quiet", "--python", PYTHON, str(venv)], check=True)
    subprocess.run(
        [
            uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "-e",
            f"{ROOT}[test]",
            f"agentlightning=={release}",
        ],
        check=True,
    )
    return python


def run(release: str, pytest_args: list[str]) -> Result:
    started = time.monotonic()
    python = prepare(release)
    print(f"\n=== agentlightning {release} ===", flush=True)
    environment = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    process = subprocess.Popen(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", *pytest_args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    last = ""
    for line in process.stdout:
        print(line, end="", flush=True)
        if line.strip():
            last = line
    exit_code = process.wait()
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in COUNTS.findall(last)}
    return Result(release, exit_code, counts, time.monotonic() - started)


def table(results: list[Result]) -> str:
    rows = [
        "| agentlightning | result | passed | failed | skipped | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        failed = r.counts.get("failed", 0) + r.counts.get("error", 0)
        verdict = "ok" if r.ok else ("no tests" if r.exit_code == 5 else f"FAILED (exit {r.exit_code})")
        rows.append(
            f"| {r.release} | {verdict} | {r.counts.get('passed', 0)} | {failed} | {r.counts.get('skipped', 0)} "
            f"| {r.seconds:.0f} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", default=",".join(RELEASES), help="comma-separated releases to test")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    options = parser.parse_args()
    releases = [r.strip() for r in options.releases.split(",") if r.strip()]
    unknown = sorted(set(releases) - set(RELEASES))
    if unknown:
        parser.error(f"unsupported releases: {', '.join(unknown)} (supported: {', '.join(RELEASES)})")
    started = time.monotonic()
    results = [run(release, options.pytest_args) for release in releases]
    print("\n" + table(results))
    passed = sum(r.counts.get("passed", 0) for r in results)
    failed = sum(r.counts.get("failed", 0) + r.counts.get("error", 0) for r in results)
    print(f"\nmatrix of {len(results)} releases in {time.monotonic() - started:.0f}s")
    print(f"total: {passed} passed, {failed} failed")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
