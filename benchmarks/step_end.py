"""What each step's end meets: LLM calls still in flight when verl puts vLLM to sleep, upstream's daemon and ours.

    .venvs/verl-0-3-0/bin/python -m benchmarks.step_end [--steps 200] [--upstream-steps 200]

Needs a verl tier's environment and this checkout's ``tests/verl`` helpers. For each of upstream
(its daemon and Flask proxy, workers calling plain ``/v1``) and the switch (ours, workers calling
their attempt's endpoint), in turn: ``tests/verl/drain_job.py``, the real daemon (v0) with a
heavy-tailed fleet (Pareto call times, stragglers re-claimed at the timeout whose calls go on)
against two stand-in vLLMs that go on generating after a hang-up, as agentlightning's patched vLLM
does, and whose ``sleep()`` fails while a request is open. Each step is verl's trainer's, the
backends put to sleep right after ``clear_data_and_server()``. Counted per release: the steps
whose sleep met calls in flight (and those calls), and the time the step's end waited
(``get_train_data_batch`` + ``clear_data_and_server``: p50 and max). Prints a markdown table and
writes it with the raw figures to ``benchmarks/results/step_end-<release>.{md,json}``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from tests.verl.parts import free_port, wait_until
from tests.verl.processes import environment, fleet

RESULTS = Path(__file__).parent / "results"


def run_variant(switch: bool, steps: int, directory: Path) -> list[dict[str, Any]]:
    """``steps`` steps of the fleet under upstream's daemon (``switch`` False) or ours; each step's record."""
    port = free_port()
    arguments = [str(port), str(directory), str(steps), *([] if switch else ["plain"])]
    with fleet(directory) as started:
        job = started.start("daemon", "tests.verl.drain_job", arguments, environment(switch))
        wait_until(lambda: job.poll() is not None, "the drain job", timeout=60 + 30 * steps)
        assert job.returncode == 0, started.output("daemon")[-4000:]
    steps_run: list[dict[str, Any]] = json.loads((directory / "drain.json").read_text())["steps"]
    return steps_run


def summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    waited = [step["waited"] for step in steps]
    met = [step for step in steps if step["failed"]]
    return {
        "steps": len(steps),
        "steps_slept_under_calls": len(met),
        "calls_open_at_sleep": sum(sum(step["open"].values()) for step in steps),
        "waited_p50_s": statistics.median(waited),
        "waited_max_s": max(waited),
        "calls_cut": sum(step["metrics"].get("attempts/llm_calls_cut", 0.0) for step in steps),
    }


def table(release: str, results: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"agentlightning {release}: steps whose vLLM sleep met LLM calls in flight",
        "",
        "| daemon | steps | steps slept under calls | calls open at the sleeps | step's end waited p50 / max "
        "| calls cut |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in results.items():
        lines.append(
            f"| {name} | {figures['steps']} | {figures['steps_slept_under_calls']} | {figures['calls_open_at_sleep']} "
            f"| {figures['waited_p50_s']:.3f} s / {figures['waited_max_s']:.3f} s | {figures['calls_cut']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Steps whose vLLM sleep met LLM calls in flight, upstream and ours.")
    parser.add_argument("--steps", type=int, default=200, help="steps under our daemon")
    parser.add_argument("--upstream-steps", type=int, default=200, help="steps under upstream's (each waits 5 s)")
    parser.add_argument("--only", choices=("upstream", "ours"), help="run one daemon only")
    options = parser.parse_args()
    release = importlib.metadata.version("agentlightning")
    raw: dict[str, list[dict[str, Any]]] = {}
    for name, switch, steps in (("upstream", False, options.upstream_steps), ("ours", True, options.steps)):
        if options.only not in (None, name):
            continue
        with TemporaryDirectory() as directory:
            raw[name] = run_variant(switch, steps, Path(directory))
    results = {name: summary(steps) for name, steps in raw.items()}
    markdown = table(release, results)
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    stem = f"step_end-{release}" + (f"-{options.only}" if options.only else "")
    (RESULTS / f"{stem}.md").write_text(markdown)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"summary": results, "steps": raw}, indent=1))


if __name__ == "__main__":
    main()
