"""A task whose agent always needs more than the timeout, with verl's real daemon: upstream and the switch.

Upstream's claim times out, the task is claimed again, and the batch takes whichever result
comes first (``benchmarks/slow_tasks.py``); under the switch (its defaults: leases, a task budget)
the worker, which heartbeats, keeps its claim: the task runs once and its own result is trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .parts import FRESH, OVERTIME, TIMEOUT_SECONDS, free_port, wait_until
from .processes import environment, fleet

WORKERS = 2


def run_slow_task(tmp_path: Path, switch: bool) -> dict[str, Any]:
    port = free_port()
    env = environment(switch)
    with fleet(tmp_path) as started:
        job = started.start("daemon", "tests.verl.slow_task_job", [str(port), str(tmp_path)], env)
        for worker in range(WORKERS):
            arguments = [f"http://127.0.0.1:{port}", str(tmp_path), str(worker)]
            started.start(f"worker-{worker}", "tests.verl.worker", arguments, env)
        wait_until(lambda: job.poll() is not None, "the daemon job", timeout=240)
        assert job.returncode == 0, started.output("daemon")[-4000:]
    return json.loads((tmp_path / "slow_task.json").read_text())


@pytest.mark.timeout(300)
def test_with_the_switch_the_slow_task_runs_once_and_its_own_result_is_trained_on(tmp_path: Path) -> None:
    report = run_slow_task(tmp_path, switch=True)
    record = report["record"]
    assert record["outcome"] == "ok", record
    assert all(c == {"reward": 1.0, "answer": FRESH} for c in record["completed"].values()), record
    assert sorted(t["rollout_id"] for t in record["trained"]) == sorted(record["queued"]), record
    assert [(a["outcome"], a["leased"]) for a in report["history"]] == [("completed", True)], report["history"]
    metrics = record["metrics"]
    assert metrics["attempts/requeues"] == 0 and metrics["attempts/max_claims_per_task"] == 1, metrics
    assert metrics["attempts/given_up"] == 0 and metrics["attempts/dropped"] == 0, metrics
    assert metrics["attempts/queue_to_last_result_s"] >= OVERTIME * TIMEOUT_SECONDS, metrics
    # What the step waited for: the one claim kept past the timeout, as long as the agent ran.
    assert metrics["attempts/kept_past_timeout"] == 1, metrics
    assert metrics["attempts/longest_kept_claim_s"] >= OVERTIME * TIMEOUT_SECONDS, metrics
