"""verl's real daemon (v0) before a stand-in vLLM that enforces a 4,608-token context, agents adding 600 tokens a turn.

    python -m tests.verl.context_job PORT SIGNAL_DIR STEPS TASKS

The stand-in (``tests/llm_proxy/stand_in_vllm.py``) counts a prompt's tokens with the daemon's own
tokenizer (``parts.tokenizer`` with a chat template joining the messages' words), answers 400 as vLLM
does past ``CONTEXT``, and generates ``ANSWER_TOKENS`` tokens an answer (fewer if ``max_tokens`` says
so). The workers run ``worker.py context``. STEPS training steps of TASKS tasks each: set-up, wait,
``get_train_data_batch(MAX_PROMPT, MAX_RESPONSE)``, clear, as verl's trainer calls them. Writes
SIGNAL_DIR/context.json: per step, the backend's 400s, what it generated (prompt tokens, new tokens per
call), the rows verl trained on and dropped (when it could build a batch), the step's metrics, and
each agent's calls. Run with the switch on (ours) or off (upstream's daemon and Flask proxy).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
import threading
from pathlib import Path
from typing import Any

from ..llm_proxy.stand_in_vllm import StandInVllm
from .daemon_job import build_daemon, set_up
from .parts import Signals, tokenizer

CONTEXT = 4608
MAX_PROMPT, MAX_RESPONSE = 2048, 256
ANSWER_TOKENS = 300
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"


def chat_tokenizer() -> Any:
    """The tier's offline tokenizer with a chat template: one token per word of the messages."""
    tokenizer_ = tokenizer()
    tokenizer_.chat_template = CHAT_TEMPLATE
    return tokenizer_


def backend_in_a_thread(tokenizer_: Any) -> StandInVllm:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    backend = StandInVllm("alpha")
    backend.max_model_len, backend.answer_tokens = CONTEXT, ANSWER_TOKENS
    backend.tokenize = lambda body: list(
        tokenizer_.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=True)
    )
    asyncio.run_coroutine_threadsafe(backend.start(), loop).result(30)
    return backend


def train_step(daemon: Any, step: int) -> dict[str, Any]:
    """``get_train_data_batch`` as verl's trainer calls it: the rows it kept and dropped, or why it failed."""
    torch: Any = importlib.import_module("torch")
    arguments: dict[str, Any] = {"max_prompt_length": MAX_PROMPT, "max_response_length": MAX_RESPONSE}
    arguments["device"] = torch.device("cpu")
    if "global_steps" in inspect.signature(daemon.get_train_data_batch).parameters:  # 0.2+
        arguments["global_steps"] = step
    try:
        proto, metrics = daemon.get_train_data_batch(**arguments)
    except Exception as error:  # upstream's daemon with no triplets fails in tensor code
        return {"error": f"{type(error).__name__}: {error}"[:300]}
    dropped = [bool(flag) for flag in proto.batch["is_drop_mask"].tolist()]
    lengths = proto.batch["attention_mask"][:, -MAX_RESPONSE:].sum(dim=-1).tolist()
    return {
        "metrics": {key: float(value) for key, value in metrics.items()},
        "rows": len(dropped),
        "dropped_rows": sum(dropped),
        "dropped_response_tokens": sum(int(n) for n, drop in zip(lengths, dropped, strict=True) if drop),
    }


def main(port: int, signal_dir: Path, steps: int, tasks: int) -> None:
    signals = Signals(signal_dir)
    tokenizer_ = chat_tokenizer()
    backend = backend_in_a_thread(tokenizer_)
    daemon = build_daemon(port, tokenizer_, timeout=60.0)
    daemon.start()
    report: list[dict[str, Any]] = []
    for step in range(1, steps + 1):
        too_long, generated = backend.too_long, len(backend.generated)
        queued = set_up(daemon, step, "train", [None] * tasks, (backend.address,))
        daemon.run_until_all_finished()
        record = {
            "step": step,
            "backend_400s": backend.too_long - too_long,
            "generated": backend.generated[generated:],
            "calls": {rid: json.loads(signals.wait(f"context-{rid}")) for rid in queued},
            **train_step(daemon, step),
        }
        daemon.clear_data_and_server()
        report.append(record)
    (signal_dir / "context.json").write_text(json.dumps(report))
    print("context job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
