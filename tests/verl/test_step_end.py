"""verl's real daemon under the switch: no LLM call in flight when vLLM sleeps, step after step (issue 36, part 1).

``drain_job.py``: a heavy-tailed fleet (Pareto call times, stragglers re-claimed at the timeout
whose calls go on) against stand-in vLLMs that keep generating after a hang-up and whose
``sleep()`` fails under an open request, as verl's trainer puts vLLM to sleep right after
``clear_data_and_server()``. Upstream's daemon sleeps it under the stragglers' calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .parts import free_port, wait_until
from .processes import environment, fleet

STEPS = 12


@pytest.mark.timeout(300)
def test_every_step_ends_with_no_llm_call_in_flight_and_says_what_it_waited_for(tmp_path: Path) -> None:
    port = free_port()
    with fleet(tmp_path) as started:
        job = started.start("daemon", "tests.verl.drain_job", [str(port), str(tmp_path), str(STEPS)], environment(True))
        wait_until(lambda: job.poll() is not None, "the drain job", timeout=240)
        output = started.output("daemon")
        assert job.returncode == 0, output[-4000:]
    report = json.loads((tmp_path / "drain.json").read_text())
    steps = report["steps"]
    assert len(steps) == STEPS
    assert [step["failed"] for step in steps] == [0] * STEPS, steps  # every sleep met no request open
    in_flight = [step["metrics"]["attempts/llm_in_flight_at_batch_end"] for step in steps]
    assert sum(count >= 1 for count in in_flight) >= STEPS // 3, in_flight  # the stragglers were still generated
    for step in steps:
        metrics = step["metrics"]
        assert metrics["attempts/llm_calls_cut"] == 0, metrics  # 120 s is ample for these
        assert metrics["attempts/llm_drain_seconds"] <= step["waited"], step
        if metrics["attempts/llm_in_flight_at_batch_end"] > 0:  # waited for (one may end within milliseconds)
            assert metrics["attempts/llm_drain_seconds"] > 0, metrics
        else:  # nothing to wait for
            assert metrics["attempts/llm_drain_seconds"] < 0.5, metrics
    assert "waited" in output and "LLM call(s) in flight" in output  # the INFO line says what it waited for
