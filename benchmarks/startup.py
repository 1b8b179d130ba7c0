"""What the environment switch's ``.pth`` hook costs an interpreter that does not use it.

    python -m benchmarks.startup [--repeat K]

Python runs ``lightning_attempts_install.pth`` at every start. Measured here, each K times (5 by
default) in turn, and printed as the median of the K measurements with their range (min to max),
with the load average, since on a shared machine one measurement says little:

- the hook itself with no ``LIGHTNING_ATTEMPTS_*`` variable set: ``site.addpackage`` on the
  installed ``.pth`` (open, read, execute its one line, which scans the environment's names
  for the prefix), which is exactly what the file adds to a start, against the whole start of
  ``python -c pass`` in this venv;
- with the variable set, what arming costs a process that never imports agentlightning
  (``python -c pass`` with and without it), and that it imports neither agentlightning
  nor lightning_attempts there.
"""

from __future__ import annotations

import argparse
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


def spread(values: list[float], unit: float, fmt: str) -> str:
    """``median (min to max)`` of ``values`` in ``unit``s, each as ``fmt``."""
    shown = [format(v / unit, fmt) for v in (statistics.median(values), min(values), max(values))]
    return f"{shown[0]} ({shown[1]} to {shown[2]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="measure each figure this many times (default 5)")
    repeat = max(1, parser.parse_args().repeat)
    hooks: list[float] = []
    unsets: list[float] = []
    armeds: list[float] = []
    load_before = os.getloadavg()[0]
    for _ in range(repeat):  # in turn, so that a change of load touches each figure alike
        hooks.append(hook_seconds())
        unsets.append(start_seconds({}))
        armeds.append(start_seconds({SWITCH: "1"}))
    shares = [hook / unset for hook, unset in zip(hooks, unsets, strict=True)]
    arming = [armed - unset for armed, unset in zip(armeds, unsets, strict=True)]
    loads = (load_before, os.getloadavg()[0])
    load = f"{min(loads):.1f} to {max(loads):.1f}"
    print(f"{repeat} measurements of each, median (min to max); load average {load}, {os.cpu_count()} CPUs")
    print(f"hook, variable unset:             {spread(hooks, 1e-6, '.1f')} us per start ({len(os.environ)} variables)")
    print(f"python -c pass, variable unset:   {spread(unsets, 1e-3, '.2f')} ms")
    print(f"the hook's share of it:           {spread(shares, 0.01, '.2f')} %")
    print(f"python -c pass, variable set:     {spread(armeds, 1e-3, '.2f')} ms")
    print(f"arming's cost:                    {spread(arming, 1e-3, '+.2f')} ms")
    print(f"imported by arming alone:         {imported_when_set() or 'nothing'}")


if __name__ == "__main__":
    main()
