"""The processes of ``benchmarks.llm_proxy``: a stand-in backend, each proxy, and the aiohttp load generator.

    python -m benchmarks.llm_proxy_roles backend PORT [--fail-status 503]
    python -m benchmarks.llm_proxy_roles ours PORT --backend HOST:PORT [--backend ...] [--connect-timeout 5]
        [--context 2048]   # needs transformers
    python -m benchmarks.llm_proxy_roles upstream PORT --backend HOST:PORT [--backend ...]   # needs verl and flask
    python -m benchmarks.llm_proxy_roles load URL --concurrency 64 --seconds 5 [--stream] [--delay-ms 100]
        [--warmup 1] [--call-timeout 120]

The backend answers OpenAI chat completions after ``x-bench-delay-ms`` milliseconds (a
header the load generator sets), with the token ids agentlightning's vLLM instrumentation
adds; streamed, it spreads ``CHUNKS`` chunks over that delay; with ``--fail-status`` it answers
that status at once to every request (a failing server). ``upstream`` runs upstream's
own proxy: ``AgentModeDaemon._start_proxy_server_v0`` called with a stand-in ``self``. ``ours
--context N`` gives our proxy a tokenizer and a model context of N tokens (``llm_proxy.context``), so
that it tokenizes every call: a Hugging Face fast tokenizer (byte-level BPE, 8,000 tokens, trained in
memory on this package's sources: nothing is downloaded) with a ChatML chat template that renders tools.
``load`` prints one JSON object: calls, failures, calls per second, p50 and p99 in ms (of the
calls answered 200; ``all_*``: of every call, a failed one at the time it failed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import statistics
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import aiohttp
import uvicorn
from starlette.types import Receive, Scope, Send

CHUNKS = 10
BENCH_ATTEMPT_ID = "0b7f3a52-1f54-4c55-9c1e-3f0b5c3cf1a2"
"""The one attempt live in ``ours``: any other id is unknown, as a made-up one is."""
PROMPT_TOKENS = 200
RESPONSE_TOKENS = 50
REQUEST = {
    "model": "stand-in",
    "messages": [{"role": "user", "content": "word " * PROMPT_TOKENS}],
    "max_tokens": RESPONSE_TOKENS,
}


def _completion() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1,
            "model": "stand-in",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "w " * RESPONSE_TOKENS}}],
            "prompt_token_ids": list(range(1000, 1000 + PROMPT_TOKENS)),
            "response_token_ids": [list(range(2000, 2000 + RESPONSE_TOKENS))],
        }
    ).encode()


def _chunk(position: int) -> bytes:
    delta = {"index": 0, "delta": {"content": "w " * (RESPONSE_TOKENS // CHUNKS)}, "finish_reason": None}
    return f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'choices': [delta]})}\n\n".encode()


COMPLETION = _completion()


async def backend_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The stand-in OpenAI-compatible backend."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    delay = next((float(v) for k, v in scope["headers"] if k == b"x-bench-delay-ms"), 0.0) / 1000
    if b'"stream": true' not in body and b'"stream":true' not in body:
        await asyncio.sleep(delay)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(COMPLETION)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": COMPLETION})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for position in range(CHUNKS):
        await asyncio.sleep(delay / CHUNKS)
        await send({"type": "http.response.body", "body": _chunk(position), "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def serve(app: Any, port: int) -> None:
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


def failing_app(status: int) -> Any:
    """A backend that answers ``status`` at once to every request."""
    body = json.dumps({"error": {"message": "failing", "type": "Failing", "code": status}}).encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


CHATML = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}"
    "\n</tools><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def chat_tokenizer() -> Any:
    """A fast tokenizer as a model ships one (byte-level BPE, ChatML template), trained in memory on this package's
    sources; exits 3 (the role is skipped) without transformers."""
    try:
        tokenizers: Any = importlib.import_module("tokenizers")
        transformers: Any = importlib.import_module("transformers")
    except ImportError as error:
        print(f"tokenizing needs transformers: {error}", file=sys.stderr)
        sys.exit(3)
    from pathlib import Path

    sources = sorted(Path(__file__).resolve().parent.parent.joinpath("lightning_attempts").rglob("*.py"))
    model = tokenizers.Tokenizer(tokenizers.models.BPE())
    model.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|im_start|>", "<|im_end|>"])
    model.train_from_iterator((path.read_text() for path in sources), trainer)
    built = transformers.PreTrainedTokenizerFast(tokenizer_object=model, eos_token="<|im_end|>", pad_token="<|im_end|>")
    built.chat_template = CHATML
    return built


async def run_ours(port: int, backends: list[str], connect_timeout: float, context: int = 0) -> None:
    """Our proxy, ``BENCH_ATTEMPT_ID`` live and every other attempt unknown, with ``/bench/stats`` beside it; with a
    ``context``, tokenizing the calls that could reach it."""
    from lightning_attempts.llm_proxy import LlmProxy, serve_proxy
    from lightning_attempts.llm_proxy.context import ContextGuard

    proxy = LlmProxy(
        lambda: backends,
        lambda rollout_id, attempt_id: None if attempt_id == BENCH_ATTEMPT_ID else "unknown_attempt",
        connect_timeout_seconds=connect_timeout,
        context=ContextGuard(chat_tokenizer(), model_context=context) if context else None,
    )

    async def with_stats(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/bench/stats":
            body = json.dumps(proxy.stats()).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
        else:
            await proxy(scope, receive, send)

    await serve_proxy(proxy, "127.0.0.1", port, app=with_stats)
    await asyncio.Event().wait()


def run_upstream(port: int, backends: list[str]) -> None:
    """Upstream's Flask proxy, its own code, with a stand-in ``self``."""
    try:
        from agentlightning.verl.daemon import AgentModeDaemon
    except ImportError as error:
        print(f"upstream's proxy needs verl and flask: {error}", file=sys.stderr)
        sys.exit(3)
    this: Any = SimpleNamespace(backend_llm_server_addresses=backends, proxy_port=port, llm_timeout_seconds=600)
    AgentModeDaemon._start_proxy_server_v0(this)  # pyright: ignore[reportPrivateUsage]
    threading.Event().wait()


async def load(
    url: str, concurrency: int, seconds: float, stream: bool, delay_ms: float, warmup: float = 1.0, timeout: float = 120
) -> dict[str, Any]:
    """``concurrency`` closed loops of calls for ``seconds``, after ``warmup`` seconds of warm-up; each call bounded
    by ``timeout`` seconds."""
    body = json.dumps({**REQUEST, "stream": stream}).encode()
    headers = {"content-type": "application/json", "x-bench-delay-ms": str(delay_ms)}
    samples: list[float] = []
    every: list[float] = []
    failed = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def loop(until: float, measured: bool) -> None:
            nonlocal failed
            while time.perf_counter() < until:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                if measured:
                    every.append((time.perf_counter() - started) * 1000)
                if measured and ok:
                    samples.append((time.perf_counter() - started) * 1000)
                elif measured:
                    failed += 1

        warm = time.perf_counter() + warmup
        await asyncio.gather(*(loop(warm, False) for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(loop(started + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    result: dict[str, Any] = {"calls": len(samples), "failed": failed, "calls_per_s": len(samples) / elapsed}
    if len(samples) >= 2:
        result.update(p50_ms=statistics.median(samples), p99_ms=statistics.quantiles(samples, n=100)[98])
    if len(every) >= 2:
        result.update(all_p50_ms=statistics.median(every), all_p99_ms=statistics.quantiles(every, n=100)[98])
        result["all_max_ms"] = max(every)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["backend", "ours", "upstream", "load"])
    parser.add_argument("target", help="the port to serve on, or the URL to load")
    parser.add_argument("--backend", action="append", default=[])
    parser.add_argument("--fail-status", type=int, default=0)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--context", type=int, default=0, help="ours: tokenize calls against this model context")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--call-timeout", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--delay-ms", type=float, default=100.0)
    options = parser.parse_args()
    if options.role == "backend":
        serve(failing_app(options.fail_status) if options.fail_status else backend_app, int(options.target))
    elif options.role == "ours":
        asyncio.run(run_ours(int(options.target), options.backend, options.connect_timeout, options.context))
    elif options.role == "upstream":
        run_upstream(int(options.target), options.backend)
    else:
        result = asyncio.run(
            load(
                options.target,
                options.concurrency,
                options.seconds,
                options.stream,
                options.delay_ms,
                options.warmup,
                options.call_timeout,
            )
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
