"""A worker killed with SIGKILL mid-batch: verl's real daemon waits about a lease with the switch, upstream its timeout.

Three processes per run: the daemon job (``dead_worker_job.py``) and two workers (``worker.py``,
the release's own runner). The worker holding the batch's ``doomed`` task is killed right after
its claim; the other one takes the rest of the batch and, once the claim ends, the doomed task.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .parts import FRESH, Signals, free_port, wait_until
from .processes import environment, fleet

WORKERS = 2
LEASE = 3.0
"""The lease for this test (``LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS``); the switch's default is 60 s."""
SWITCH_TIMEOUT = 600.0
"""The daemon's ``llm_timeout_seconds`` under the switch: far above the lease, as verl's are (600, 1200 s)."""
UPSTREAM_TIMEOUT = 20.0
"""Upstream's, kept short: upstream waits all of it, whatever it is."""


def run_with_a_killed_worker(tmp_path: Path, switch: bool, llm_timeout: float) -> tuple[dict[str, Any], float, float]:
    """Run the job, kill the doomed task's worker; return the job's report, when the claim was made and the kill."""
    port = free_port()
    env = environment(switch, **({"LIGHTNING_ATTEMPTS_UNRESPONSIVE_SECONDS": str(LEASE)} if switch else {}))
    signals = Signals(tmp_path)
    with fleet(tmp_path) as started:
        job = started.start("daemon", "tests.verl.dead_worker_job", [str(port), str(tmp_path), str(llm_timeout)], env)
        for worker in range(WORKERS):
            started.start(
                f"worker-{worker}", "tests.verl.worker", [f"http://127.0.0.1:{port}", str(tmp_path), str(worker)], env
            )
        wait_until(lambda: bool(signals.first_claims()) or job.poll() is not None, "the doomed claim", timeout=240)
        assert job.poll() is None, started.output("daemon")[-4000:]
        (doomed,) = signals.first_claims()
        wait_until(lambda: bool(signals.claimed_by(doomed)), "the doomed claim's worker")
        (worker,) = signals.claimed_by(doomed)
        started.processes[f"worker-{worker}"].send_signal(signal.SIGKILL)
        killed_at = time.time()
        wait_until(lambda: job.poll() is not None, "the daemon job", timeout=llm_timeout + 120)
        assert job.returncode == 0, started.output("daemon")[-4000:]
    report = json.loads((tmp_path / "dead_worker.json").read_text())
    claimed_at = min(signals.claim_times(doomed))  # the first claim; the re-claim is noted too
    return report, claimed_at, killed_at


def assert_exact(record: dict[str, Any]) -> None:
    assert record["outcome"] == "ok", record
    assert sorted(record["completed"]) == sorted(record["queued"]), record
    assert all(c == {"reward": 1.0, "answer": FRESH} for c in record["completed"].values()), record


@pytest.mark.timeout(300)
def test_upstream_waits_the_whole_timeout_for_a_killed_worker(tmp_path: Path) -> None:
    report, claimed_at, _ = run_with_a_killed_worker(tmp_path, switch=False, llm_timeout=UPSTREAM_TIMEOUT)
    record = report["record"]
    assert_exact(record)
    waited = record["returned_at"] - claimed_at
    print(f"upstream: the batch returned {waited:.1f} s after the doomed claim ({UPSTREAM_TIMEOUT:g} s timeout)")
    assert waited >= UPSTREAM_TIMEOUT, record  # requeued only at its timeout


@pytest.mark.timeout(300)
def test_with_the_switch_a_killed_worker_costs_about_a_lease(tmp_path: Path) -> None:
    report, _, killed_at = run_with_a_killed_worker(tmp_path, switch=True, llm_timeout=SWITCH_TIMEOUT)
    assert (report["task_timeout_seconds"], report["unresponsive_seconds"]) == (SWITCH_TIMEOUT, LEASE), report
    record = report["record"]
    assert_exact(record)
    waited = record["returned_at"] - killed_at
    print(f"switch: the batch returned {waited:.1f} s after the kill ({LEASE:g} s lease, {SWITCH_TIMEOUT:g} s timeout)")
    assert waited < LEASE + 15, waited  # a lease and a re-claim's rollout on a loaded machine, not 600 s
    assert [(a["outcome"], a["leased"]) for a in report["history"]] == [("unresponsive", True), ("completed", True)]
    metrics = record["metrics"]
    assert metrics["attempts/requeues"] == 1 and metrics["attempts/max_claims_per_task"] == 2, metrics
