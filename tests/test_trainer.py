"""The upstream Trainer of the installed release, with forked workers, against AttemptAwareServer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from lightning_attempts import AttemptAwareServer
from lightning_attempts.testing import serve_in_thread

from .upstream import RESOURCES

SCRIPT = Path(__file__).parent / "scripts" / "trainer_fleet.py"
WORKERS, MAX_TASKS = 2, 4
# Task 0 straggles; the other worker finishes the other three and, with a claim to spare, polls
# until the straggler's claim expires and re-claims it. Fillers make up WORKERS * MAX_TASKS.
TASKS = 4


def group_processes(pgid: int) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                found.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def run_trainer(kind: str, tmp_path: Path, **variables: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Run trainer_fleet.py with ``kind`` of client against a fresh server: its stats, what was stored, the ids."""
    server = AttemptAwareServer(port=0, task_timeout_seconds=1.0)
    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        rids = [served.call(server.queue_task({"i": i, "slow": i == 0}, mode="train")) for i in range(TASKS)]
        command = [sys.executable, str(SCRIPT), served.endpoint, str(WORKERS), str(MAX_TASKS), kind]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTNING_ATTEMPTS_")}
        # Its own process group: the trainer's workers and AgentOps server process can all be ended.
        trainer = subprocess.Popen(  # cwd: AgentOps writes its log there
            command,
            start_new_session=True,
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={**environment, **variables},
        )
        try:
            stored: dict[str, Any] = {}
            for rid in rids:
                rollout = served.call(server.poll_completed_rollout(rid, timeout=120), timeout=130)
                assert rollout is not None, f"{rid} never completed"
                stored[rid] = rollout
            # Every worker stops after MAX_TASKS claims: feed fillers until the trainer returns.
            processes = group_processes(trainer.pid)
            assert any(p.name().startswith("AgentLightning-") or "Worker" in " ".join(p.cmdline()) for p in processes)
            while trainer.poll() is None:
                served.call(server.queue_task({"filler": True}, mode="train"))
                try:
                    trainer.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
            assert trainer.returncode == 0
            assert trainer.stdout is not None and "trainer finished" in trainer.stdout.read()
            stats = server.attempt_stats()
        finally:
            for process in group_processes(trainer.pid):
                process.kill()
            trainer.wait(timeout=30)
        assert group_processes(trainer.pid) == []
    return stats, stored, rids


@pytest.mark.timeout(180)
def test_trainer_with_forked_workers_stores_one_current_result_per_task(tmp_path: Path) -> None:
    stats, stored, rids = run_trainer("shim", tmp_path)
    assert sorted(stored) == sorted(rids)  # exactly one per task...
    assert {rid: stored[rid].final_reward for rid in rids} == dict.fromkeys(rids, 1.0)  # ...the current one's
    assert stats["requeues"] >= 1 and stats["accepted_unverified"] == 0
    assert stats["dropped"]["already_completed"] + stats["dropped"]["superseded"] >= 1


@pytest.mark.timeout(240)
@pytest.mark.parametrize("switch", ["1", "0"])
def test_the_environment_switch_alone_gives_forked_workers_the_shim(tmp_path: Path, switch: str) -> None:
    """The worker script hands the trainer a URL and never imports lightning_attempts."""
    stats, stored, rids = run_trainer("url", tmp_path, LIGHTNING_ATTEMPTS_INSTALL=switch)
    assert sorted(stored) == sorted(rids)
    if switch == "1":  # every result carried its claim's attempt id
        assert stats["accepted_unverified"] == 0 and stats["accepted"] >= TASKS
    else:  # upstream's client: none did
        assert stats["accepted_unverified"] == stats["accepted"] >= TASKS
