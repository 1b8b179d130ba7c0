"""What an over-long LLM call gets: upstream's daemon and Flask proxy against the switch's, same run, same fleet.

    .venvs/verl-0-3-0/bin/python -m benchmarks.over_long_calls [--steps 4] [--tasks 4]

Needs a verl tier's environment (as ``benchmarks.step_overhead``) and this checkout's ``tests/verl``
helpers. For each of upstream (switch off) and the switch, in turn: ``tests/verl/context_job.py``, the
real daemon (v0) before a stand-in vLLM that enforces a 4,608-token context as vLLM does (400 past it),
counting prompts with the daemon's tokenizer and generating up to 300 tokens an answer; two workers
whose agents add 600 tokens a turn and call with ``max_tokens=1024`` until the LLM refuses a call;
``--steps`` training steps with verl's ``max_prompt_length`` 2,048 and ``max_response_length`` 256.
Per side: the backend's 400s, the agents' calls answered, capped and refused, the tokens generated,
those generated for calls whose rows ``get_train_data_batch`` then drops (prompt over
``max_prompt_length``), and those past ``max_response_length`` (truncated off the rows kept).
Prints a markdown table (and writes it with the raw figures to ``benchmarks/results/over_long_calls.{md,json}``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from tests.verl.context_job import CONTEXT, MAX_PROMPT, MAX_RESPONSE
from tests.verl.test_context import run_context_job

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"upstream": False, "switch": True}
ROWS = {
    "backend_400s": "backend 400s (context exceeded)",
    "calls_answered": "calls answered",
    "calls_capped": "calls with `max_tokens` capped",
    "calls_refused_by_proxy": "calls refused by the proxy (400 `context_length_exceeded`)",
    "tokens_generated": "tokens generated",
    "tokens_for_dropped_rows": f"tokens generated for calls whose rows are dropped (prompt > {MAX_PROMPT})",
    "tokens_past_max_response": f"tokens generated past `max_response_length` ({MAX_RESPONSE}, truncated)",
}


def summary(steps: list[dict[str, Any]], *, from_step: int = 1) -> dict[str, float]:
    """The figures of ``ROWS`` over the job's steps from ``from_step`` on."""
    kept = [step for step in steps if step["step"] >= from_step]
    generated = [(prompt, new) for step in kept for prompt, new in step["generated"]]
    kept_rows = [(prompt, new) for prompt, new in generated if prompt <= MAX_PROMPT]
    metrics = [step.get("metrics", {}) for step in kept]
    return {
        "backend_400s": sum(step["backend_400s"] for step in kept),
        "calls_answered": len(generated),
        "calls_capped": sum(m.get("attempts/llm_calls_capped", 0.0) for m in metrics),
        "calls_refused_by_proxy": sum(
            m.get("attempts/llm_calls_refused_too_long", 0.0) + m.get("attempts/llm_calls_refused_prompt_too_long", 0.0)
            for m in metrics
        ),
        "tokens_generated": sum(new for _, new in generated),
        "tokens_for_dropped_rows": sum(new for prompt, new in generated if prompt > MAX_PROMPT),
        "tokens_past_max_response": sum(max(new - MAX_RESPONSE, 0) for _, new in kept_rows),
    }


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    header = "| per run | upstream | switch | switch, from step 2 |\n| --- | ---: | ---: | ---: |\n"
    figures = {
        "upstream": summary(results["upstream"]),
        "switch": summary(results["switch"]),
        "later": summary(results["switch"], from_step=2),
    }
    lines = [
        f"| {label} | {figures['upstream'][key]:,.0f} | {figures['switch'][key]:,.0f} | {figures['later'][key]:,.0f} |"
        for key, label in ROWS.items()
    ]
    return header + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=4)
    arguments = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    for name, switch in VARIANTS.items():
        with TemporaryDirectory() as directory:
            results[name] = run_context_job(Path(directory), switch, arguments.steps, arguments.tasks)
    markdown = (
        f"Context {CONTEXT:,} tokens, agents adding 600 tokens a turn (`max_tokens` 1,024), "
        f"{arguments.steps} training steps of {arguments.tasks} tasks; the switch learns the trainer's limits "
        "at step 1's `get_train_data_batch`.\n\n" + table(results)
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "over_long_calls.md").write_text(markdown)
    (RESULTS / "over_long_calls.json").write_text(json.dumps(results, indent=1))
    print(markdown)


if __name__ == "__main__":
    main()
