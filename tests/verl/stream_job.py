"""verl's real daemon (v0) under the switch, trained on the rows of agents that stream their LLM calls.

    python -m tests.verl.stream_job PORT SIGNAL_DIR

Two stand-in vLLM servers (``proxy_job.backends_in_a_thread``: vLLM 0.10.2+, streams carry ids when
asked) behind the daemon's proxy. One training batch of ``PLAN``: the workers (``worker.py stream``,
the release's runner with its AgentOps tracer) make a whole then a streamed call with openai's
client and return a reward, so the runner sends the tracer's triplets, the streamed call's without
token ids; the first claim of the ``straggle`` task makes its calls, outlives the timeout and posts
after its re-claim's result is stored. Writes SIGNAL_DIR/stream.json: the triplets the daemon received,
the rows verl trained on (token ids), the step's metrics and what each backend received.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from .daemon_job import build_daemon, completed_rollouts, on_server_loop, set_up
from .parts import STALE, Signals, tokenizer
from .proxy_job import MAX_PROMPT, MAX_RESPONSE, backends_in_a_thread, unpadded

PLAN: list[str | None] = ["straggle", None]


def ids_of(triplet: Any) -> list[list[int]]:
    return [list(triplet.prompt.get("token_ids", [])), list(triplet.response.get("token_ids", []))]


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
    signals.wait(Signals.posted(straggled, STALE))  # the straggler's calls were made and its result dropped
    sent = {rid: [ids_of(t) for t in rollout.triplets or ()] for rid, rollout in completed_rollouts(daemon).items()}
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
    completed = completed_rollouts(daemon)  # as verl took them
    filled = {rid: [dict(t.metadata or {}) for t in rollout.triplets or ()] for rid, rollout in completed.items()}
    report = {
        "queued": queued,
        "straggled": straggled,
        "stored_attempt": on_server_loop(daemon, lambda: daemon.server.store.stored_attempt(straggled)),
        "sent": sent,
        "metadata": filled,
        "trained": trained,
        "metrics": {key: float(value) for key, value in metrics.items()},
        "received": {  # the calls (the daemon also asks each backend GET /v1/models)
            b.name: [(r.json()["messages"][0]["content"], r.json()) for r in b.received if r.method == "POST"]
            for b in backends
        },
    }
    daemon.clear_data_and_server()
    (signal_dir / "stream.json").write_text(json.dumps(report, default=str))
    print("stream job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
