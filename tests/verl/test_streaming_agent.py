"""An agent that streams its LLM calls is trained on the token ids the proxy recorded for its stored attempt.

Three processes (``stream_job.py``: verl's real daemon under the switch, its proxy, two stand-in vLLM
servers; two workers, ``worker.py stream``: the release's runner with its AgentOps tracer, openai's
client), one training batch of two tasks, the first claim of one straggling past its timeout after
making its calls. The tracer sends the streamed call's triplet with ``token_ids: []`` (upstream's daemon
says "contains empty response" and trains on an empty row); the daemon gives it the ids the proxy recorded
(it asked vLLM for them: ``return_token_ids``) for the attempt whose result is stored, and no other's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ..llm_proxy.stand_in_vllm import prompt_ids, response_ids
from .parts import free_port, wait_until
from .processes import environment, fleet

WORKERS = 2


def run_stream_job(tmp_path: Path) -> tuple[dict[str, Any], str]:
    port = free_port()
    with fleet(tmp_path) as started:
        job_env = environment(True, LIGHTNING_ATTEMPTS_TASK_BUDGET="none")
        job = started.start("daemon", "tests.verl.stream_job", [str(port), str(tmp_path)], job_env)
        for worker in range(WORKERS):
            arguments = [f"http://127.0.0.1:{port}", str(tmp_path), str(worker), "stream"]
            worker_env = environment(True, AGENTOPS_LOGGING_TO_FILE="False")  # no agentops.log in the cwd
            started.start(f"worker-{worker}", "tests.verl.worker", arguments, worker_env)
        wait_until(lambda: job.poll() is not None, "the stream job", timeout=240)
        output = started.output("daemon")
        workers = "".join(started.output(f"worker-{w}")[-3000:] for w in range(WORKERS))
        assert job.returncode == 0, output[-4000:] + workers
    return json.loads((tmp_path / "stream.json").read_text()), output


def chat(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


@pytest.mark.timeout(300)
def test_a_streaming_agent_trains_on_the_ids_the_proxy_recorded_for_its_stored_attempt(tmp_path: Path) -> None:
    report, output = run_stream_job(tmp_path)
    index = {rid: i for i, rid in enumerate(report["queued"])}
    straggled = report["straggled"]
    received = {name: [(content, body) for content, body in calls] for name, calls in report["received"].items()}
    backend_of = {content: name for name, calls in received.items() for content, _ in calls}
    # Every claim made both calls, the straggler's first claim too; the proxy asked for a stream's ids.
    kinds = {rid: ("again" if rid == straggled else "first") for rid in index}
    contents = {rid: [f"task {i} {kinds[rid]} {n}" for n in ("one", "two")] for rid, i in index.items()}
    assert f"task {index[straggled]} first two" in backend_of  # called while live: recorded, for its own attempt
    for _, body in (call for calls in received.values() for call in calls):
        assert body.get("return_token_ids") is (True if body.get("stream") else None), body
    # The tracer sent the whole call's ids and none for the streamed call: what upstream trains on as empty rows.
    for rid, (one, _) in contents.items():
        assert report["sent"][rid] == [[prompt_ids(chat(one)), response_ids(backend_of[one])], [[], []]], rid
    assert "contains empty response" in output
    # verl trained on the stored attempts' calls, the streamed one's ids from the proxy.
    rows: dict[str, list[tuple[list[int], list[int]]]] = {}
    for row in report["trained"]:
        rows.setdefault(row["rollout_id"], []).append((row["prompt"], row["response"]))
    for rid, called in contents.items():
        assert rows[rid] == [(prompt_ids(chat(c)), response_ids(backend_of[c])) for c in called], rid
        assert [meta.get("token_ids_from") for meta in report["metadata"][rid]] == [
            None,
            "lightning_attempts.llm_proxy",
        ]
    metrics = report["metrics"]
    assert metrics["attempts/proxy_token_ids_filled"] == len(index), metrics
    assert metrics["attempts/proxy_replaced_rollouts"] == metrics["attempts/triplets_without_token_ids"] == 0
    assert metrics["attempts/proxy_triplets"] == 0 and metrics["attempts/llm_calls"] == 2 * len(index) + 2
