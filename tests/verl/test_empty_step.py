"""A training step with nothing to train on: upstream fails inside tensor code, the switch says why.

Three processes per run: the daemon job (``empty_step_job.py``) and two workers (``worker.py
empty``: the release's own runner, an agent that rewards 1.0 and returns no triplets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .parts import free_port, wait_until
from .processes import environment, fleet

WORKERS = 2


def run_empty_step(tmp_path: Path, switch: bool) -> dict[str, Any]:
    port = free_port()
    env = environment(switch)
    with fleet(tmp_path) as started:
        job = started.start("daemon", "tests.verl.empty_step_job", [str(port), str(tmp_path)], env)
        for worker in range(WORKERS):
            arguments = [f"http://127.0.0.1:{port}", str(tmp_path), str(worker), "empty"]
            started.start(f"worker-{worker}", "tests.verl.worker", arguments, env)
        wait_until(lambda: job.poll() is not None, "the daemon job", timeout=240)
        assert job.returncode == 0, started.output("daemon")[-4000:]
    return json.loads((tmp_path / "empty_step.json").read_text())


@pytest.mark.timeout(300)
def test_upstream_fails_inside_its_tensor_code(tmp_path: Path) -> None:
    outcome = run_empty_step(tmp_path, switch=False)["outcome"]
    assert outcome != "ok" and outcome["error"] != "NoTrainingData", outcome
    print(f"upstream: {outcome}")


@pytest.mark.timeout(300)
def test_with_the_switch_the_step_fails_saying_why(tmp_path: Path) -> None:
    record = run_empty_step(tmp_path, switch=True)
    assert all(c == {"reward": 1.0, "answer": None} for c in record["completed"].values()), record
    outcome = record["outcome"]
    assert outcome["error"] == "NoTrainingData", outcome
    assert "2 tasks, 0 given up, 0 failed, 2 empty" in outcome["message"], outcome
    assert "tracer" in outcome["message"], outcome
