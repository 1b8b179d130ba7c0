"""The upstream Trainer of the installed release, with forked workers, against AttemptAwareServer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from lightning_attempts import AttemptAwareServer
from lightning_attempts.testing import ServerThread, serve_in_thread

from ..paths import SCRIPTS
from ..upstream import RESOURCES

SCRIPT = SCRIPTS / "trainer_fleet.py"
WORKERS, MAX_TASKS = 2, 4
# Task 0 straggles; the other worker finishes the other three and, with a claim to spare, polls
# until the straggler's claim expires and re-claims it. Fillers make up WORKERS * MAX_TASKS.
TASKS = 4
KEY = "fleet-key-1234"


def group_processes(pgid: int) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                found.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def start_trainer(endpoint: str, kind: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The fleet script in a process group of its own: the trainer's workers and AgentOps server can all be ended."""
    command = [sys.executable, str(SCRIPT), endpoint, str(WORKERS), str(MAX_TASKS), kind]
    environment = {**os.environ, **(env or {})}
    # cwd: AgentOps writes its log there
    return subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.PIPE, text=True, cwd=cwd, env=environment
    )


def end_trainer(trainer: subprocess.Popen[str]) -> None:
    processes = group_processes(trainer.pid)
    for process in processes:
        process.kill()
    trainer.wait(timeout=30)
    psutil.wait_procs(processes, timeout=30)
    assert group_processes(trainer.pid) == []


def drive(
    server: AttemptAwareServer, served: ServerThread[AttemptAwareServer], kind: str, env: dict[str, str], cwd: Path
) -> tuple[dict[str, Any], list[str]]:
    """Queue the straggler batch and run the ``kind`` fleet's trainer until it returns: what was stored, the ids."""
    served.call(server.update_resources(RESOURCES))
    rids = [served.call(server.queue_task({"i": i, "slow": i == 0}, mode="train")) for i in range(TASKS)]
    trainer = start_trainer(served.endpoint, kind, cwd, env)
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
    finally:
        end_trainer(trainer)
    return stored, rids


def run_batch(
    server: AttemptAwareServer, served: ServerThread[AttemptAwareServer], trainer_env: dict[str, str], cwd: Path
) -> None:
    """The straggler batch on the shim fleet: one current result per task."""
    stored, rids = drive(server, served, "shim", trainer_env, cwd)
    assert sorted(stored) == sorted(rids)  # exactly one per task...
    assert {rid: stored[rid].final_reward for rid in rids} == dict.fromkeys(rids, 1.0)  # ...the current one's
    stats = server.attempt_stats()
    assert stats["requeues"] >= 1 and stats["accepted_unverified"] == 0
    assert stats["dropped"]["already_completed"] + stats["dropped"]["superseded"] >= 1


@pytest.mark.timeout(180)
def test_trainer_with_forked_workers_stores_one_current_result_per_task(tmp_path: Path) -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=1.0)
    with serve_in_thread(server) as served:
        run_batch(server, served, {}, tmp_path)


@pytest.mark.timeout(180)
def test_forked_shim_workers_with_agl_key_complete_a_batch_on_a_keyed_server(tmp_path: Path) -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=1.0, api_key=KEY)
    with serve_in_thread(server) as served:
        run_batch(server, served, {"AGL_KEY": KEY}, tmp_path)
        assert server.attempt_stats()["unauthorized"] == 0  # the key crossed the trainer's fork


@pytest.mark.timeout(180)
def test_an_old_fleet_gets_401s_on_a_keyed_server_and_nothing_of_it_is_taken(tmp_path: Path) -> None:
    server = AttemptAwareServer(port=0, task_timeout_seconds=1.0, api_key=KEY)
    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        rids = [served.call(server.queue_task({"i": i}, mode="train")) for i in range(TASKS)]
        trainer = start_trainer(served.endpoint, "upstream", tmp_path, {"AGL_KEY": KEY})  # upstream's can't send it
        try:
            # Each worker polls every 0.05 s; wait for both to have been refused a few times (or the trainer to die).
            for _ in range(1200):
                if served.run(server.attempt_stats)["unauthorized"] >= 10 or trainer.poll() is not None:
                    break
                served.call(asyncio.sleep(0.1))
            assert trainer.poll() is None, "the old fleet's trainer ended"
        finally:
            end_trainer(trainer)
        stats = served.run(server.attempt_stats)
        assert stats["unauthorized"] >= 10
        assert (stats["claims"], stats["accepted"], stats["queued"]) == (0, 0, TASKS)
        assert served.call(server.retrieve_completed_rollouts()) == []
        assert served.run(lambda: [server.attempt_history(rid) for rid in rids]) == [[]] * TASKS


@pytest.mark.timeout(240)
@pytest.mark.parametrize("switch", ["1", "0"])
def test_the_environment_switch_alone_gives_forked_workers_the_shim(tmp_path: Path, switch: str) -> None:
    """The worker script hands the trainer a URL and never imports lightning_attempts."""
    server = AttemptAwareServer(port=0, task_timeout_seconds=1.0)
    with serve_in_thread(server) as served:
        stored, rids = drive(server, served, "url", {"LIGHTNING_ATTEMPTS_INSTALL": switch}, tmp_path)
        stats = served.run(server.attempt_stats)
    assert sorted(stored) == sorted(rids)
    if switch == "1":  # every result carried its claim's attempt id
        assert stats["accepted_unverified"] == 0 and stats["accepted"] >= TASKS
    else:  # upstream's client: none did
        assert stats["accepted_unverified"] == stats["accepted"] >= TASKS


@pytest.mark.timeout(300)
# forkserver pickles the trainer as spawn does: checked in the `once` tiers (0.1 and 0.3.0: the 0.1.x and 0.2+
# clients, whose failures without the fix differed), spawn in every tier.
@pytest.mark.parametrize("start_method", ["spawn", pytest.param("forkserver", marks=pytest.mark.once)])
def test_the_switch_reaches_spawned_workers_whose_trainer_was_pickled(tmp_path: Path, start_method: str) -> None:
    """The trainer pickles itself, and the installed client, into each worker: both must survive it."""
    server = AttemptAwareServer(port=0, task_timeout_seconds=1.0)
    env = {"LIGHTNING_ATTEMPTS_INSTALL": "1", "FLEET_START_METHOD": start_method}
    with serve_in_thread(server) as served:
        stored, rids = drive(server, served, "url", env, tmp_path)
        stats = served.run(server.attempt_stats)
    assert sorted(stored) == sorted(rids)
    assert {rid: stored[rid].final_reward for rid in rids} == dict.fromkeys(rids, 1.0)  # the current results
    assert stats["accepted_unverified"] == 0 and stats["accepted"] >= TASKS  # each carried its attempt id
