"""What verl's daemon adds to each step: upstream's ``AgentModeDaemon`` against the switch's, same run.

    .venvs/verl-0-3-0/bin/python -m benchmarks.step_overhead [--steps 10] [--workers 3]

Needs a verl tier's environment (``nox -s 'verl(0.3.0)'`` or ``'verl(0.1.2)'`` builds it: verl,
CPU torch, Ray) and this checkout's ``tests/verl`` helpers. For each of upstream and the switch
(``LIGHTNING_ATTEMPTS_INSTALL=1``), in turn: the real daemon in a process of its own (v0), an
idle fleet of agentlightning's runner as workers in others, polling as users' workers do
(upstream's client every 5 s, the shim by long polls), each task ``WORK_SECONDS`` of work, one
task per worker. Then a warm-up step (first-time costs on both sides, not measured) and
``--steps`` training steps as verl's trainer runs them (``set_up_data_and_server``,
``run_until_all_finished``, ``get_train_data_batch``, ``clear_data_and_server``), and per step:

- queue to first claim: from ``set_up_data_and_server`` to the first task reaching a worker;
- last result to return: from the moment the batch's last result is posted (the worker sends
  it) to ``run_until_all_finished`` returning (upstream sleeps 5 s per check);
- step minus work: the whole step less the work (``WORK_SECONDS``, every task at once).

Prints a markdown table of p50 and max (and writes it with the raw figures to
``benchmarks/results/step_overhead-<release>.{md,json}``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import json
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from tests.verl.daemon_job import build_daemon, set_up
from tests.verl.parts import FRESH, WORK_SECONDS, Signals, free_port, tokenizer, wait_until
from tests.verl.processes import environment, fleet

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"upstream": False, "switch": True}
MEASURES = {
    "queue_to_first_claim": "`set_up_data_and_server` to the first claim reaching a worker",
    "last_result_to_return": "last result sent to `run_until_all_finished` returning",
    "step_minus_work": "whole step minus the work",
}
FLEET_READY = "fleet-ready"
TIMEOUT_SECONDS = 600.0
"""The daemon's ``llm_timeout_seconds`` (upstream's default): no claim times out here."""


def run_steps(port: int, signal_dir: Path, steps: int, tasks: int) -> None:
    """The daemon's process: a warm-up step (0), then ``steps`` steps of ``tasks`` tasks, once the fleet is ready."""
    signals = Signals(signal_dir)
    tokenizer_ = tokenizer()
    daemon = build_daemon(port, tokenizer_, TIMEOUT_SECONDS)
    print(f"daemon class {type(daemon).__module__}.{type(daemon).__qualname__}", flush=True)
    daemon.start()
    signals.wait(FLEET_READY, timeout=300)
    with (signal_dir / "steps.jsonl").open("w") as log:
        for step in range(steps + 1):
            queued_at = time.time()
            queued = set_up(daemon, step, "train", [None] * tasks)
            daemon.run_until_all_finished()
            returned_at = time.time()
            arguments: dict[str, Any] = {"max_prompt_length": 4, "max_response_length": 4, "device": "cpu"}
            if "global_steps" in inspect.signature(daemon.get_train_data_batch).parameters:  # 0.3.0
                arguments["global_steps"] = step
            daemon.get_train_data_batch(**arguments)
            daemon.clear_data_and_server()
            record = {"step": step, "queued": queued, "queued_at": queued_at, "returned_at": returned_at}
            log.write(json.dumps({**record, "ended_at": time.time()}) + "\n")
            log.flush()
    print("steps finished", flush=True)


def measure(signal_dir: Path) -> dict[str, list[float]]:
    """Each step's figures, from the daemon's records and the workers' notes."""
    signals = Signals(signal_dir)
    figures: dict[str, list[float]] = {name: [] for name in MEASURES}
    for line in (signal_dir / "steps.jsonl").read_text().splitlines():
        step = json.loads(line)
        if step["step"] == 0:  # warm-up
            continue
        claims = [at for rid in step["queued"] for at in signals.claim_times(rid)]
        posts = [signals.sent_at(rid, FRESH) for rid in step["queued"]]
        figures["queue_to_first_claim"].append(min(claims) - step["queued_at"])
        figures["last_result_to_return"].append(step["returned_at"] - max(at for at in posts if at is not None))
        figures["step_minus_work"].append(step["ended_at"] - step["queued_at"] - WORK_SECONDS)
    return figures


def run_variant(switch: bool, steps: int, workers: int, directory: Path) -> dict[str, list[float]]:
    port = free_port()
    with fleet(directory) as started:
        env = environment(switch)
        arguments = ["daemon", str(port), str(directory), str(steps), str(workers)]
        job = started.start("daemon", "benchmarks.step_overhead", arguments, env)
        for worker in range(workers):
            arguments = [f"http://127.0.0.1:{port}", str(directory), str(worker), "work"]
            started.start(f"worker-{worker}", "tests.verl.worker", arguments, env)
        for worker in range(workers):
            wait_until(lambda w=worker: f"worker {w} ready" in started.output(f"worker-{w}"), "the fleet", 300)
        time.sleep(6)  # let every worker settle into its idle polling (upstream's: one poll every 5 s)
        Signals(directory).set(FLEET_READY)
        wait_until(lambda: job.poll() is not None, "the steps", timeout=60 * steps + 300)
        output = started.output("daemon")
    if job.returncode != 0:
        raise RuntimeError(f"the daemon's process failed:\n{output[-4000:]}")
    expected = "lightning_attempts.verl.daemon.AttemptAwareDaemon" if switch else "agentlightning.verl.daemon."
    if f"daemon class {expected}" not in output:
        raise RuntimeError(f"expected the daemon {expected}...:\n{output[:2000]}")
    return measure(directory)


def table(release: str, results: dict[str, dict[str, list[float]]], steps: int, workers: int) -> str:
    lines = [
        f"agentlightning {release}, verl's real daemon (v0), {steps} steps, {workers} idle workers, "
        f"{WORK_SECONDS} s of work per task, one task per worker; seconds, p50 / max",
        "",
        "| measure | upstream | switch |",
        "| --- | --- | --- |",
    ]
    for name, description in MEASURES.items():
        cells: list[str] = []
        for variant in VARIANTS:
            values = results[variant][name]
            cells.append(f"{statistics.median(values):.3f} / {max(values):.3f}")
        lines.append(f"| {description} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["daemon"]:  # the daemon's process, started by run_variant
        run_steps(int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="upstream,switch (default: both)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args()
    release = importlib.metadata.version("agentlightning")
    results: dict[str, dict[str, list[float]]] = {}
    for variant in options.variants.split(","):
        with TemporaryDirectory(prefix=f"step-overhead-{variant}-") as directory:
            results[variant] = run_variant(VARIANTS[variant], options.steps, options.workers, Path(directory))
    for variant in VARIANTS:  # a variant left out shows as n/a
        results.setdefault(variant, {name: [float("nan")] for name in MEASURES})
    markdown = table(release, results, options.steps, options.workers)
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / f"step_overhead-{release}.md").write_text(markdown + "\n")
    (options.output / f"step_overhead-{release}.json").write_text(json.dumps(results, indent=1))
    print(markdown)


if __name__ == "__main__":
    main()
