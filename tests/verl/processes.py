"""Processes a verl-tier test starts: each in a session of its own, all ended by the test, none surviving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent.parent


def environment(switch: bool, **extra: str) -> dict[str, str]:
    """This process's environment with the switch set, or with every ``LIGHTNING_ATTEMPTS_*`` removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTNING_ATTEMPTS_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    if switch:
        env["LIGHTNING_ATTEMPTS_INSTALL"] = "1"
    return {**env, **extra}


def session_members(sid: int) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid:
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


class Fleet:
    """Started modules (``python -m ...``), their output in files under ``logs``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, module: str, args: list[str], env: dict[str, str], prefix: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m module args``, after ``prefix`` (e.g. ``ip netns exec NS``, which execs it)."""
        with (self.logs / f"{name}.log").open("wb") as output:
            process = subprocess.Popen(
                [*prefix, sys.executable, "-m", module, *args],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session: everything it starts can be found and ended
            )
        self.processes[name] = process
        return process

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def end(self) -> list[str]:
        """Kill every started process and whatever it started; return those that outlived their session's end."""
        for process in self.processes.values():
            for member in session_members(process.pid):
                try:
                    member.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    continue
            process.wait(timeout=30)
        _, alive = psutil.wait_procs([m for p in self.processes.values() for m in session_members(p.pid)], timeout=10)
        return [f"{p.pid} {p.name()}" for p in alive]


@contextmanager
def fleet(logs: Path) -> Generator[Fleet]:
    started = Fleet(logs)
    try:
        yield started
    finally:
        survivors = started.end()
        assert survivors == [], f"processes survived the test: {survivors}"
