"""verl's real daemon under the switch serves its LLM calls through the attempt-aware proxy, not upstream's Flask one.

Three processes (``proxy_job.py``: the daemon, its server and proxy, two stand-in vLLM servers;
two workers, ``worker.py proxy``: the release's own runner on the shim, calling ``main_llm`` and
returning no triplets), ``AGL_KEY`` in all of them. One training batch with a straggler whose task
is re-claimed at its timeout (the task budget off, as ``test_daemon.py`` has it).
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from ..llm_proxy.stand_in_vllm import prompt_ids, response_ids
from .parts import ATTEMPT_ID, Signals, free_port, wait_until
from .processes import environment, fleet

WORKERS = 2


def run_proxy_job(tmp_path: Path) -> tuple[dict[str, Any], str]:
    port, key = free_port(), {"AGL_KEY": secrets.token_urlsafe(24)}
    with fleet(tmp_path) as started:
        job_env = environment(True, LIGHTNING_ATTEMPTS_TASK_BUDGET="none", **key)
        job = started.start("daemon", "tests.verl.proxy_job", [str(port), str(tmp_path)], job_env)
        for worker in range(WORKERS):
            arguments = [f"http://127.0.0.1:{port}", str(tmp_path), str(worker), "proxy"]
            started.start(f"worker-{worker}", "tests.verl.worker", arguments, environment(True, **key))
        wait_until(lambda: job.poll() is not None, "the proxy job", timeout=240)
        output = started.output("daemon")
        assert job.returncode == 0, output[-4000:] + "".join(started.output(f"worker-{w}")[-2000:] for w in range(2))
    return json.loads((tmp_path / "proxy.json").read_text()), output


def chat(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


@pytest.mark.timeout(300)
def test_the_proxy_refuses_stale_attempts_streams_sticks_trains_on_what_it_saw_and_keeps_its_key(
    tmp_path: Path,
) -> None:
    report, output = run_proxy_job(tmp_path)
    assert "Serving Flask app" not in output and "Proxy server running on port" in output  # ours, upstream's line
    signals, straggled = Signals(tmp_path), report["straggled"]
    served = {b: [content for content, _ in received] for b, received in report["received"].items()}
    backend_of = {content: b for b, contents in served.items() for content in contents}
    index = {rid: i for i, rid in enumerate(report["queued"])}
    # Each claim was served its own attempt's endpoint, and called it whole, then streamed.
    notes = {(rid, kind): signals.get(f"proxy-{rid}-{kind}") for rid in index for kind in ("first", "again")}
    claims = {claim: json.loads(note) for claim, note in notes.items() if note is not None}
    port = report["proxy_port"]
    for (rid, kind), note in claims.items():
        own = rf"http://127\.0\.0\.1:{port}/rollout/{rid}/attempt/{ATTEMPT_ID}/v1"
        assert re.fullmatch(own, note["endpoint"]), note
        one, two = note["calls"]
        assert one["status"] == 200 and one["content"] in backend_of, note
        if (rid, kind) == (straggled, "first"):
            continue
        assert two["status"] == 200 and two["stream"] and two["events"][-1] == "data: [DONE]", note
        assert len(two["events"]) > 2, note  # chunk by chunk
        assert backend_of[one["content"]] == backend_of[two["content"]], note  # one attempt, one backend
    # The straggler's call after its task was re-claimed (and completed) was refused; no backend saw it. Made after
    # the batch's last result, it is refused because the step ended.
    refused = claims[(straggled, "first")]["calls"][1]
    assert refused["status"] == 409 and refused["code"] in {"already_completed", "step_ended"}, refused
    assert refused["content"] not in backend_of
    assert (straggled, "again") in claims and len(claims) == len(index) + 1
    # No rollout carried triplets: verl trained on the rows the proxy recorded for the stored attempts, exactly.
    assert not any(report["had_triplets"].values())
    rows: dict[str, list[tuple[list[int], list[int]]]] = {}
    for row in report["trained"]:
        rows.setdefault(row["rollout_id"], []).append((row["prompt"], row["response"]))
    for rid, i in index.items():
        kind = "again" if rid == straggled else "first"
        contents = [f"task {i} {kind} one", f"task {i} {kind} two"]
        assert rows[rid] == [(prompt_ids(chat(c)), response_ids(backend_of[c])) for c in contents], rid
    metrics = report["metrics"]
    assert metrics["attempts/proxy_triplets"] == 2 * len(index), metrics
    assert metrics["attempts/llm_calls"] == 2 * len(index) + 1, metrics  # and the straggler's first call
    refusals = metrics["attempts/llm_calls_refused_stale"] + metrics["attempts/llm_calls_refused_step_ended"]
    assert refusals == 1, metrics
    assert 0 < metrics["attempts/llm_proxy_added_p50_ms"] <= metrics["attempts/llm_proxy_added_p99_ms"] < 1000
    # The key: plain /v1 needs it; an attempt's URL needs none, and works only while the attempt is live.
    keys = report["keys"]
    assert keys["plain_without_key"] == keys["plain_with_wrong_key"] == {"status": 401, "code": "unauthorized"}
    assert keys["plain_with_key"] == {"status": 200}
    assert keys["stored_attempt"] == {"status": 409, "code": "completed"}
    assert keys["guessed_attempt"] == {"status": 409, "code": "unknown_attempt"}
