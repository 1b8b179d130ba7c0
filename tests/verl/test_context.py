"""Over-long calls under verl's real daemon: no backend 400s, and no generation for rows verl then drops.

``context_job.py``: the daemon (switch on), a stand-in vLLM enforcing a 4,608-token context, two workers
(``worker.py context``) whose agents add 600 tokens a turn with ``max_tokens=1024`` until refused. Two
training steps: in the first the proxy knows the model's context only (from ``/v1/models``), from the
second the trainer's ``max_prompt_length`` and ``max_response_length`` too (``get_train_data_batch``'s).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .context_job import CONTEXT, MAX_PROMPT, MAX_RESPONSE
from .parts import free_port, wait_until
from .processes import environment, fleet

WORKERS, STEPS, TASKS = 2, 2, 2


def run_context_job(tmp_path: Path, switch: bool, steps: int = STEPS, tasks: int = TASKS) -> list[dict[str, Any]]:
    """The job's report (``context.json``) with the switch on (ours) or off (upstream's daemon and proxy)."""
    port = free_port()
    with fleet(tmp_path) as started:
        arguments = [str(port), str(tmp_path), str(steps), str(tasks)]
        job = started.start("daemon", "tests.verl.context_job", arguments, environment(switch))
        for worker in range(WORKERS):
            arguments = [f"http://127.0.0.1:{port}", str(tmp_path), str(worker), "context"]
            started.start(f"worker-{worker}", "tests.verl.worker", arguments, environment(switch))
        wait_until(lambda: job.poll() is not None, "the context job", timeout=240)
        output = started.output("daemon")
        assert job.returncode == 0, output[-4000:] + "".join(started.output(f"worker-{w}")[-2000:] for w in range(2))
    return json.loads((tmp_path / "context.json").read_text())


@pytest.mark.timeout(300)
def test_over_long_calls_are_capped_or_refused_before_the_backend_and_dropped_rows_are_not_generated(
    tmp_path: Path,
) -> None:
    first, second = run_context_job(tmp_path, switch=True)
    for step in (first, second):
        assert step["backend_400s"] == 0, step  # stock: one per agent
        for calls in step["calls"].values():  # each agent went on until the proxy refused it, as vLLM would
            assert calls[-1] == {"status": 400, "code": "context_length_exceeded"}, calls
            assert all(call["status"] == 200 for call in calls[:-1]), calls
        assert all(prompt + new <= CONTEXT for prompt, new in step["generated"]), step["generated"]
    # Step 1: the model's context only; calls past it were capped (not failed), the last refused.
    metrics = first["metrics"]
    assert metrics["attempts/llm_calls_capped"] >= TASKS and metrics["attempts/llm_calls_refused_too_long"] == TASKS
    assert metrics["attempts/llm_prompts_tokenized"] > 0 and metrics["attempts/llm_tokenize_s"] > 0
    assert first["dropped_rows"] > 0  # the trainer's limits were not known yet: as upstream
    # Step 2: the trainer's limits learnt from step 1's get_train_data_batch.
    metrics = second["metrics"]
    assert metrics["attempts/llm_calls_refused_prompt_too_long"] == TASKS, metrics
    assert second["dropped_rows"] == 0 and second["dropped_response_tokens"] == 0, second
    assert all(prompt <= MAX_PROMPT and new <= MAX_RESPONSE for prompt, new in second["generated"])
    assert second["rows"] == sum(len(calls) - 1 for calls in second["calls"].values())
