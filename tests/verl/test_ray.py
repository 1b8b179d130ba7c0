"""verl's real launch path: the switch in the driver's environment reaches the daemon built in a Ray actor."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from lightning_attempts import AttemptAwareServer

from .parts import free_port, wait_until
from .processes import environment, fleet

TOKEN = "VERL_TIER_RAY_TOKEN"
"""Set in the job's environment: every process of its Ray cluster inherits it, so none can hide."""


def marked(token: str) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(TOKEN) == token:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def ray_token() -> Iterator[str]:
    """A token for one Ray cluster; afterwards no process carrying it (raylet, GCS, workers) may remain."""
    token = uuid.uuid4().hex
    try:
        yield token
    finally:
        _, alive = psutil.wait_procs(marked(token), timeout=30)  # ray.shutdown() ends them; give it time
        for process in alive:
            process.kill()
        assert [p.pid for p in alive] == [], f"Ray processes outlived ray.shutdown(): {[p.name() for p in alive]}"


def run_ray_job(tmp_path: Path, token: str, switch: bool) -> dict[str, Any]:
    port = free_port()
    with fleet(tmp_path) as started:
        arguments = [str(port), str(tmp_path / "report.json")]
        job = started.start("ray", "tests.verl.ray_job", arguments, environment(switch, **{TOKEN: token}))
        wait_until(lambda: job.poll() is not None, "the Ray job", timeout=400)
        output = started.output("ray")
    assert job.returncode == 0, output[-4000:]
    report: dict[str, Any] = json.loads((tmp_path / "report.json").read_text())
    assert report["pid"] != report["driver_pid"]  # the daemon lives in the actor's process
    return report


@pytest.mark.timeout(480)
def test_switch_in_the_drivers_environment_reaches_the_daemon_in_a_ray_actor(tmp_path: Path, ray_token: str) -> None:
    report = run_ray_job(tmp_path, ray_token, switch=True)
    assert report["switch"] == "1"
    assert report["daemon"][:2] == [
        "lightning_attempts.verl.daemon.AttemptAwareDaemon",
        "agentlightning.verl.daemon.AgentModeDaemon",
    ], report
    assert f"{AttemptAwareServer.__module__}.{AttemptAwareServer.__qualname__}" in report["server"], report
    assert report["stats_status"] == 200  # the actor's daemon serves the attempt-aware routes


@pytest.mark.timeout(480)
def test_without_the_switch_the_actor_builds_upstreams_server(tmp_path: Path, ray_token: str) -> None:
    report = run_ray_job(tmp_path, ray_token, switch=False)
    assert report["switch"] is None
    assert report["daemon"] == ["agentlightning.verl.daemon.AgentModeDaemon", "builtins.object"], report
    assert report["server"] == ["agentlightning.server.AgentLightningServer", "builtins.object"], report
    assert report["stats_status"] == 404
