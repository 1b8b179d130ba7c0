"""verl's real ``AgentModeDaemon`` (v0 mode) driven through ``PLAN``, in a process of its own.

    python -m tests.verl.daemon_job PORT SIGNAL_DIR

For each batch: ``set_up_data_and_server``, ``run_until_all_finished``, then
``get_train_data_batch`` (train) or ``get_test_metrics`` (val), exactly as verl's trainer calls
them; one JSON line per batch goes to SIGNAL_DIR/batches.jsonl: the queued rollout ids, what
the daemon collected, what it trained on, and the exception if the daemon raised. After a
batch it signals ``batch-N-done`` and waits until both claims of each slow task have posted,
so that a late result is on the server before the next batch starts. With
``LIGHTNING_ATTEMPTS_INSTALL=1`` in its environment the daemon builds the attempt-aware server
(the hook installs it on the first import of agentlightning); nothing here calls ``install()``.
The daemon's server and proxy run in daemon threads that cannot be stopped: ending this
process ends them.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from .parts import DUMMY_LLM_BACKEND, FRESH, PLAN, STALE, TIMEOUT_SECONDS, Signals, tokenizer

MAX_PROMPT, MAX_RESPONSE = 4, 4


def build_daemon(port: int, tokenizer_: Any) -> Any:
    daemon_class: Any = importlib.import_module("agentlightning.verl.daemon").AgentModeDaemon
    options: dict[str, Any] = {
        "port": port,
        "train_rollout_n": 1,
        "train_information": {"model": "test-model"},
        "tokenizer": tokenizer_,
        "mini_batch_size": 1,
        "pad_token_id": tokenizer_.pad_token_id,
        "llm_timeout_seconds": TIMEOUT_SECONDS,
    }
    if "mode" in inspect.signature(daemon_class).parameters:  # 0.2+: v1 is the default
        options["mode"] = "v0"
    return daemon_class(**options)


def server_classes(daemon: Any) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(daemon.server).__mro__]


def completed_rollouts(daemon: Any) -> dict[str, Any]:
    for name in ("_completed_rollouts_v0", "_completed_rollouts"):  # 0.2+, 0.1.x
        if hasattr(daemon, name):
            return dict(getattr(daemon, name))
    raise AttributeError("the daemon keeps no completed rollouts")


def failure(error: BaseException) -> dict[str, Any]:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.endswith("verl/daemon.py")]
    where = f"daemon.py:{frames[-1].lineno}" if frames else None
    return {"error": type(error).__name__, "message": str(error), "where": where}


def run_batch(daemon: Any, tokenizer_: Any, batch: int, mode: str, slow: list[str | None]) -> dict[str, Any]:
    numpy: Any = importlib.import_module("numpy")
    torch: Any = importlib.import_module("torch")
    size = len(slow)
    data = {  # as verl's trainer passes gen_batch.non_tensor_batch: columns of object arrays
        "batch": numpy.array([batch] * size, dtype=object),
        "index": numpy.array(list(range(size)), dtype=object),
        "slow": numpy.array(slow, dtype=object),
    }
    is_train = mode == "train"
    daemon.set_up_data_and_server(data, [DUMMY_LLM_BACKEND], is_train=is_train)
    queued = list(daemon._task_id_to_original_sample)
    slow_ids = {rid: sample["slow"] for rid, sample in daemon._task_id_to_original_sample.items() if sample["slow"]}
    daemon.run_until_all_finished(verbose=False)

    def decode(ids: Any) -> str:
        return str(tokenizer_.decode(list(ids), skip_special_tokens=True))

    record: dict[str, Any] = {"batch": batch, "mode": mode, "queued": queued, "slow": slow_ids, "outcome": "ok"}
    record["completed"] = {
        rid: {"reward": r.final_reward, "answer": decode(r.triplets[0].response["token_ids"]) if r.triplets else None}
        for rid, r in completed_rollouts(daemon).items()
    }
    try:
        if is_train:
            arguments: dict[str, Any] = {"max_prompt_length": MAX_PROMPT, "max_response_length": MAX_RESPONSE}
            arguments["device"] = torch.device("cpu")
            if "global_steps" in inspect.signature(daemon.get_train_data_batch).parameters:  # 0.2+
                arguments["global_steps"] = batch
            proto, _ = daemon.get_train_data_batch(**arguments)
            rewards = proto.batch["token_level_scores"].float().sum(dim=-1).tolist()
            record["trained"] = [
                {"rollout_id": str(rid), "reward": reward, "answer": decode(row.tolist())}
                for rid, reward, row in zip(
                    proto.non_tensor_batch["rollout_id_list"], rewards, proto.batch["responses"], strict=True
                )
            ]
        else:
            record["metrics"] = {k: float(v) for k, v in daemon.get_test_metrics().items() if k == "val/reward"}
    except Exception as error:  # the upstream daemon's assertion / KeyError is what the test looks for
        record["outcome"] = failure(error)
    return record


def main(port: int, signal_dir: Path) -> None:
    signals = Signals(signal_dir)
    tokenizer_ = tokenizer()
    daemon = build_daemon(port, tokenizer_)
    print(f"daemon server {json.dumps(server_classes(daemon))}", flush=True)
    daemon.start()
    with (signal_dir / "batches.jsonl").open("w") as log:
        for batch, (mode, slow) in enumerate(PLAN, start=1):
            record = run_batch(daemon, tokenizer_, batch, mode, slow)
            log.write(json.dumps(record) + "\n")
            log.flush()
            signals.set(Signals.batch_done(batch))
            for rollout_id in record["slow"]:
                for answer in (STALE, FRESH):
                    signals.wait(Signals.posted(rollout_id, answer))
    if hasattr(daemon.server, "attempt_stats"):  # the attempt-aware server: read on its own loop

        async def read_stats() -> Any:
            return daemon.server.attempt_stats()

        stats = asyncio.run_coroutine_threadsafe(read_stats(), daemon.server.loop).result(30)
        (signal_dir / "attempt_stats.json").write_text(json.dumps(stats))
    print("daemon job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
