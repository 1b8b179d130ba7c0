"""verl's real daemon serving ``main_llm`` through its LLM proxy to a stand-in LLM on this host's loopback.

    python -m tests.verl.llm_job PORT SIGNAL_DIR TASKS

A stand-in OpenAI-compatible server (``/v1/chat/completions``, ``LLM_ANSWER``) listens on
127.0.0.1 only; the daemon's backend is that address, so its proxy (on ``0.0.0.0``) forwards
to it, as it forwards to vLLM. One training batch of TASKS tasks; the workers (elsewhere) call
``resources["main_llm"].endpoint``. Writes SIGNAL_DIR/llm.json: the batch record, the number of
requests the stand-in answered, and the endpoint the server stores.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .daemon_job import build_daemon, run_batch
from .parts import LLM_ANSWER, tokenizer

TIMEOUT_SECONDS = 60.0
"""The daemon's ``llm_timeout_seconds``: no claim here should time out."""


class StandInLLM(BaseHTTPRequestHandler):
    """Answers every chat completion with ``LLM_ANSWER``, counting them."""

    answered = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.send_error(404)
            return
        with StandInLLM.lock:
            StandInLLM.answered += 1
        body = json.dumps(
            {
                "id": "chatcmpl-stand-in",
                "object": "chat.completion",
                "created": 0,
                "model": request.get("model", "stand-in"),
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": LLM_ANSWER}}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def stored_endpoint(daemon: Any) -> str:
    """The ``main_llm`` endpoint the server stores (read on its loop)."""

    async def read() -> Any:
        return await daemon.server._store.get_latest_resources()

    update = asyncio.run_coroutine_threadsafe(read(), daemon.server.loop).result(30)
    return str(update.resources["main_llm"].endpoint)


def main(port: int, signal_dir: Path, tasks: int) -> None:
    llm = ThreadingHTTPServer(("127.0.0.1", 0), StandInLLM)
    threading.Thread(target=llm.serve_forever, daemon=True).start()
    backend = f"127.0.0.1:{llm.server_address[1]}"
    tokenizer_ = tokenizer()
    daemon = build_daemon(port, tokenizer_, TIMEOUT_SECONDS)
    print(f"daemon class {type(daemon).__module__}.{type(daemon).__qualname__}", flush=True)
    daemon.start()
    record = run_batch(daemon, tokenizer_, 1, "train", [None] * tasks, (backend,))
    report = {"record": record, "answered": StandInLLM.answered, "stored_endpoint": stored_endpoint(daemon)}
    (signal_dir / "llm.json").write_text(json.dumps(report))
    print("llm job finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
