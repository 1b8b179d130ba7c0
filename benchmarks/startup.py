"""What the environment switch's ``.pth`` hook costs an interpreter that does not use it.

    python -m benchmarks.startup

Python runs ``lightning_attempts_install.pth`` at every start. Measured here, in one run:

- the hook itself with no ``LIGHTNING_ATTEMPTS_*`` variable set: ``site.addpackage`` on the
  installed ``.pth`` (open, read, execute its one line, which scans the environment's names
  for the prefix), which is exactly what the file adds to a start, against the whole start of
  ``python -c pass`` in this venv;
- with the variable set, what arming costs a process that never imports agentlightning
  (``python -c pass`` with and without it), and that it imports neither agentlightning
  nor lightning_attempts there.
"""

from __future__ import annotations

import json
import os
import site
import statistics
import subprocess
import sys
import sysconfig
import time
import timeit
from pathlib import Path

PTH = "lightning_attempts_install.pth"
SWITCH = "LIGHTNING_ATTEMPTS_INSTALL"
PREFIX = "LIGHTNING_ATTEMPTS_"


def hook_seconds(repeat: int = 20_000) -> float:
    """Median seconds for site to process the installed .pth once, with no LIGHTNING_ATTEMPTS_* variable set."""
    site_packages = sysconfig.get_paths()["purelib"]
    if not (Path(site_packages) / PTH).exists():
        sys.exit(f"{PTH} is not installed in {site_packages}: install the package first")
    for name in [name for name in os.environ if name.startswith(PREFIX)]:
        del os.environ[name]
    runs = timeit.repeat(lambda: site.addpackage(site_packages, PTH, set()), number=repeat // 20, repeat=20)
    return statistics.median(runs) / (repeat // 20)


def start_seconds(variables: dict[str, str], runs: int = 60) -> float:
    """Median wall time of ``python -c pass`` in this venv."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)} | variables
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=environment, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def imported_when_set() -> list[str]:
    probe = (
        "import json, sys; print(json.dumps([m for m in ('agentlightning', 'lightning_attempts') if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, SWITCH: "1"}, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def main() -> None:
    hook = hook_seconds()
    unset, armed = start_seconds({}), start_seconds({SWITCH: "1"})
    print(f"hook, variable unset:             {hook * 1e6:8.2f} us per start ({len(os.environ)} variables set)")
    print(f"python -c pass, variable unset:   {unset * 1e3:8.2f} ms (the hook: {hook / unset:.3%} of it)")
    print(f"python -c pass, variable set:     {armed * 1e3:8.2f} ms ({(armed - unset) * 1e3:+.2f} ms to arm)")
    print(f"imported by arming alone:         {imported_when_set() or 'nothing'}")


if __name__ == "__main__":
    main()
