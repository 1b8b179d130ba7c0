"""verl's real daemon (v0) under the switch, its LLM proxy in front of two stand-in vLLM servers.

    python -m tests.verl.proxy_job PORT SIGNAL_DIR

The stand-ins (``tests/llm_proxy/stand_in_vllm.py``: token ids as agentlightning's vLLM
instrumentation adds them, streamed ids as vLLM 0.10.2+ gives them, every request recorded)
run in a thread of their own. One training batch of ``PLAN``: the workers (``worker.py proxy``)
call ``main_llm`` and return rewards without triplets; the first claim of the ``straggle`` task
outlives the timeout and calls again after its re-claim's result is stored. Then, before the
batch is cleared, calls with and without the key (``AGL_KEY`` in this job's environment).
Writes SIGNAL_DIR/proxy.json: what each backend received, the rows verl trained on (token ids),
the step's metrics, the proxy's stats and the answers to those calls.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..llm_proxy.stand_in_vllm import StandInVllm
from .daemon_job import build_daemon, completed_rollouts, on_server_loop, set_up
from .parts import STALE, Signals, tokenizer

PLAN: list[str | None] = ["straggle", None, None]
MAX_PROMPT, MAX_RESPONSE = 64, 16


def backends_in_a_thread() -> list[StandInVllm]:
    """Two stand-in vLLM servers serving on a loop of their own."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    started = [StandInVllm("alpha"), StandInVllm("beta")]
    for backend in started:
        asyncio.run_coroutine_threadsafe(backend.start(), loop).result(30)
    return started


def unpadded(row: Any, pad: int) -> list[int]:
    return [int(token) for token in row.tolist() if int(token) != pad]


def status_of(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """POST a chat completion to ``url``: the status and the error code, if any."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "key check"}]}).encode()
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **headers})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=20) as response:
            return {"status": response.status}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "code": json.loads(error.read() or b"{}").get("error", {}).get("code")}


def key_checks(daemon: Any, stored: tuple[str, str]) -> dict[str, Any]:
    base = f"http://127.0.0.1:{daemon.proxy_port}"
    plain, key = f"{base}/v1/chat/completions", os.environ["AGL_KEY"]
    return {
        "plain_without_key": status_of(plain, {}),
        "plain_with_wrong_key": status_of(plain, {"authorization": "Bearer wrong"}),
        "plain_with_key": status_of(plain, {"authorization": f"Bearer {key}"}),
        "stored_attempt": status_of(f"{base}/rollout/{stored[0]}/attempt/{stored[1]}/v1/chat/completions", {}),
        "guessed_attempt": status_of(f"{base}/rollout/{stored[0]}/attempt/guessed/v1/chat/completions", {}),
    }


def main(port: int, signal_dir: Path) -> None:
    signals = Signals(signal_dir)
    torch: Any = importlib.import_module("torch")
    backends = backends_in_a_thread()
    tokenizer_ = tokenizer()
    daemon = build_daemon(port, tokenizer_)
    daemon.start()
    queued = set_up(daemon, 1, "train", PLAN, tuple(backend.address for backend in backends))
    (straggled,) = [rid for rid, sample in daemon._task_id_to_original_sample.items() if sample["slow"]]
    daemon.run_until_all_finished()
    signals.wait(f"proxy-{straggled}-first")  # the straggler's second call was answered: this step counts it
    had_triplets = {rid: bool(rollout.triplets) for rid, rollout in completed_rollouts(daemon).items()}
    arguments: dict[str, Any] = {"max_prompt_length": MAX_PROMPT, "max_response_length": MAX_RESPONSE}
    arguments["device"] = torch.device("cpu")
    if "global_steps" in inspect.signature(daemon.get_train_data_batch).parameters:  # 0.2+
        arguments["global_steps"] = 1
    proto, metrics = daemon.get_train_data_batch(**arguments)
    pad = tokenizer_.pad_token_id
    trained = [
        {"rollout_id": str(rid), "prompt": unpadded(prompt, pad), "response": unpadded(response, pad)}
        for rid, prompt, response in zip(
            proto.non_tensor_batch["rollout_id_list"], proto.batch["prompts"], proto.batch["responses"], strict=True
        )
    ]
    stored = on_server_loop(daemon, lambda: daemon.server.store.stored_attempt(straggled))
    signals.wait(Signals.posted(straggled, STALE))  # the straggler tried its second call, then posted
    on_server_loop(daemon, daemon.attempt_proxy.open_step)  # as the next batch's set-up does, for the key checks
    report = {
        "proxy_port": daemon.proxy_port,
        "queued": queued,
        "straggled": straggled,
        "stored_attempt": stored,
        "had_triplets": had_triplets,
        "trained": trained,
        "metrics": {key: float(value) for key, value in metrics.items()},
        "received": {
            b.name: [
                (r.json()["messages"][0]["content"], bool(r.json().get("stream")))
                for r in b.received
                if r.method == "POST"  # the daemon's proxy also asks GET /v1/models (the model's context)
            ]
            for b in backends
        },
        "keys": key_checks(daemon, (straggled, stored)),  # with the step open again (it ended: 409 step_ended)
        "proxy_stats": on_server_loop(daemon, lambda: daemon.attempt_proxy.stats()),
    }
    daemon.clear_data_and_server()
    (signal_dir / "proxy.json").write_text(json.dumps(report, default=str))
    print("proxy job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
