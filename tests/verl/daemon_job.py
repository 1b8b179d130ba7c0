"""verl's real ``AgentModeDaemon`` (v0 mode) driven through ``PLAN``, in a process of its own.

    python -m tests.verl.daemon_job PORT SIGNAL_DIR

For each batch: ``set_up_data_and_server``, ``run_until_all_finished``, then
``get_train_data_batch`` (train) or ``get_test_metrics`` (val), then ``clear_data_and_server``,
exactly as verl's trainer calls them; one JSON line per batch goes to SIGNAL_DIR/batches.jsonl:
the queued rollout ids, what the daemon collected, what it trained on, the metrics, when the
wait returned, and the exception if the daemon raised. After a batch it signals
``batch-N-done`` and waits until both claims of each slow task have posted, so that a late
result is on the server before the next batch starts. With ``LIGHTNING_ATTEMPTS_INSTALL=1`` in
its environment the daemon is ``AttemptAwareDaemon`` and builds the attempt-aware server (the
hook installs them on the import of agentlightning and of its daemon); nothing here calls
``install()``.

Then, with the attempt-aware daemon only (SIGNAL_DIR/later.json): a batch abandoned while its
task is claimed (``clear_data_and_server`` must cancel it; the worker's late post is then
dropped), a batch after it (whose metrics count the cancellation), and a batch whose wait is
under way when the server stops (the wait must raise, not hang). The daemon's server and proxy
run in daemon threads that cannot be stopped: ending this process ends them.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .parts import DUMMY_LLM_BACKEND, FRESH, PLAN, STALE, TIMEOUT_SECONDS, Signals, tokenizer, wait_until

MAX_PROMPT, MAX_RESPONSE = 4, 4


def build_daemon(port: int, tokenizer_: Any, timeout: float = TIMEOUT_SECONDS) -> Any:
    daemon_class: Any = importlib.import_module("agentlightning.verl.daemon").AgentModeDaemon
    options: dict[str, Any] = {
        "port": port,
        "train_rollout_n": 1,
        "train_information": {"model": "test-model"},
        "tokenizer": tokenizer_,
        "mini_batch_size": 1,
        "pad_token_id": tokenizer_.pad_token_id,
        "llm_timeout_seconds": timeout,
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


def set_up(
    daemon: Any, batch: int, mode: str, slow: list[str | None], backends: tuple[str, ...] = (DUMMY_LLM_BACKEND,)
) -> list[str]:
    """``set_up_data_and_server`` as verl's trainer calls it; the queued rollout ids."""
    numpy: Any = importlib.import_module("numpy")
    size = len(slow)
    data = {  # as verl's trainer passes gen_batch.non_tensor_batch: columns of object arrays
        "batch": numpy.array([batch] * size, dtype=object),
        "index": numpy.array(list(range(size)), dtype=object),
        "slow": numpy.array(slow, dtype=object),
    }
    daemon.set_up_data_and_server(data, list(backends), is_train=mode == "train")
    return list(daemon._task_id_to_original_sample)


def numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()}


def run_batch(
    daemon: Any,
    tokenizer_: Any,
    batch: int,
    mode: str,
    slow: list[str | None],
    backends: tuple[str, ...] = (DUMMY_LLM_BACKEND,),
) -> dict[str, Any]:
    torch: Any = importlib.import_module("torch")
    is_train = mode == "train"
    queued = set_up(daemon, batch, mode, slow, backends)
    slow_ids = {rid: sample["slow"] for rid, sample in daemon._task_id_to_original_sample.items() if sample["slow"]}
    daemon.run_until_all_finished()  # verbose, as verl's trainer calls it
    returned_at = time.time()

    def decode(ids: Any) -> str:
        return str(tokenizer_.decode(list(ids), skip_special_tokens=True))

    record: dict[str, Any] = {"batch": batch, "mode": mode, "queued": queued, "slow": slow_ids, "outcome": "ok"}
    record["returned_at"] = returned_at
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
            proto, metrics = daemon.get_train_data_batch(**arguments)
            record["metrics"] = numbers(metrics)
            rewards = proto.batch["token_level_scores"].float().sum(dim=-1).tolist()
            record["trained"] = [
                {"rollout_id": str(rid), "reward": reward, "answer": decode(row.tolist())}
                for rid, reward, row in zip(
                    proto.non_tensor_batch["rollout_id_list"], rewards, proto.batch["responses"], strict=True
                )
            ]
        else:
            record["metrics"] = numbers(daemon.get_test_metrics())
    except Exception as error:  # the upstream daemon's assertion / KeyError is what the test looks for
        record["outcome"] = failure(error)
    daemon.clear_data_and_server()
    return record


def on_server_loop(daemon: Any, call: Any) -> Any:
    async def run() -> Any:
        return call()

    return asyncio.run_coroutine_threadsafe(run(), daemon.server.loop).result(30)


def later_steps(daemon: Any, tokenizer_: Any, signals: Signals, first: int) -> dict[str, Any]:
    """An abandoned batch, the batch after it, and a wait the server's stop must end."""
    report: dict[str, Any] = {}
    # Abandoned while claimed: clear_data_and_server cancels it, and its late result is dropped.
    (held,) = set_up(daemon, first, "train", ["hold"])
    wait_until(lambda: (signals.directory / f"claimed-{held}").exists(), "the held task's claim")
    daemon.clear_data_and_server()
    report["abandoned"] = {"rollout_id": held, "cancelled_total": daemon.cancelled_total}
    report["abandoned"]["history"] = on_server_loop(daemon, lambda: daemon.server.attempt_history(held))
    signals.set(Signals.released(held))
    report["abandoned"]["post"] = json.loads(signals.wait(Signals.posted(held, FRESH)))
    report["next"] = run_batch(daemon, tokenizer_, first + 1, "val", [None])
    # The server stops while the daemon waits for a batch: the wait raises.
    (waiting,) = set_up(daemon, first + 2, "train", ["hold"])
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            daemon.run_until_all_finished()
            outcome["returned"] = True
        except BaseException as error:
            outcome["error"] = f"{type(error).__module__}.{type(error).__qualname__}: {error}"
            outcome["runtime_error"] = isinstance(error, RuntimeError)  # what upstream's wait raises

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    wait_until(lambda: (signals.directory / f"claimed-{waiting}").exists(), "the waited task's claim")
    stopped_at = time.monotonic()
    asyncio.run_coroutine_threadsafe(daemon.server.stop(), daemon.server.loop)
    waiter.join(timeout=30)
    report["stopped"] = {"alive": waiter.is_alive(), "seconds": time.monotonic() - stopped_at, **outcome}
    signals.set(Signals.released(waiting))
    return report


def main(port: int, signal_dir: Path) -> None:
    signals = Signals(signal_dir)
    tokenizer_ = tokenizer()
    daemon = build_daemon(port, tokenizer_)
    print(f"daemon server {json.dumps(server_classes(daemon))}", flush=True)
    print(f"daemon class {json.dumps([f'{c.__module__}.{c.__qualname__}' for c in type(daemon).__mro__])}", flush=True)
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
    if hasattr(daemon, "cancelled_total"):  # the attempt-aware daemon
        later = later_steps(daemon, tokenizer_, signals, len(PLAN) + 1)
        (signal_dir / "later.json").write_text(json.dumps(later))
    print("daemon job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
