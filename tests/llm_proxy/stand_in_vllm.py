"""A stand-in vLLM: OpenAI chat completions with the token ids agentlightning's instrumentation adds.

A real ASGI app served by uvicorn on loopback, in the test's event loop. Non-streamed
answers carry top-level ``prompt_token_ids`` and ``response_token_ids`` (one list per
choice), as ``agentlightning.instrumentation.vllm`` adds them; ``"stream": true`` answers
server-sent events, and with ``"return_token_ids": true`` each chunk carries the ids as vLLM
0.10.2+ does (``prompt_token_ids`` in the first, ``choices[].token_ids`` in each); with
``streams_ids`` False, as vLLM before 0.10.2, a stream carries none, asked or not. Every
request is recorded. ``gate``, when set to an unset event, holds each answer (a stream after
its first chunk) until the test sets it; a client hanging up meanwhile is noted. Faults:
``fail_with`` answers that status to every request at once (a failing server), ``stall_streams``
sends a stream's headers and then nothing, ``cut_streams`` drops the connection after a
stream's first chunk (and the gate, if any). ``max_model_len``, when set, is said in ``/v1/models``
and enforced as vLLM does: a call whose prompt plus ``max_tokens`` (or ``max_completion_tokens``;
unset: the room left) exceeds it is answered 400 with vLLM's message (``too_long`` counts them);
``answer_tokens``, when set, is how many tokens an answer has at most (``max_tokens`` bounds it);
``generated`` notes, with ``answer_tokens`` set, each answered call's (prompt tokens, new tokens);
``tokenize`` gives a call's prompt ids for all these and in the answer (by default ``prompt_ids``).
``keeps_generating`` makes it behave as
agentlightning's patched vLLM server: a held answer goes on after its client hung up (until the
gate opens); ``sleep()`` then fails while a chat request is still open, as vLLM's sleep under a
request crashes. ``generation_seconds(body)``, when set, is how long each chat request takes
to generate (whatever its client does meanwhile).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from lightning_attempts.llm_proxy.asgi import read_body
from lightning_attempts.server.lifecycle import Serving

RESPONSE_TOKENS = 3


class SleptUnderRequests(RuntimeError):
    """``StandInVllm.sleep()`` while a chat request was open (vLLM would crash)."""


@dataclass(frozen=True)
class Received:
    """One request as the stand-in saw it."""

    method: str
    path: str
    query: bytes
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def prompt_ids(body: dict[str, Any]) -> list[int]:
    """The stand-in's tokenizer: one id per character of the messages' contents."""
    return [ord(char) for message in body.get("messages", []) for char in str(message.get("content", ""))]


def response_ids(name: str) -> list[int]:
    """The ids the stand-in called ``name`` answers with (so that tests can tell backends apart)."""
    base = 1000 * (1 + sum(map(ord, name)) % 50)
    return [base + i for i in range(RESPONSE_TOKENS)]


class StandInVllm:
    """One stand-in vLLM server; ``await start()``, ``await stop()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[Received] = []
        self.gate: asyncio.Event | None = None
        self.hung_up = asyncio.Event()
        """Set when a client hung up while an answer was held."""
        self.fail_with: int | None = None
        self.stall_streams = False
        self.cut_streams = False
        self.streams_ids = True
        """False: a vLLM before 0.10.2, which ignores ``return_token_ids``."""
        self.max_model_len: int | None = None
        self.answer_tokens: int | None = None
        self.too_long = 0
        self.generated: list[tuple[int, int]] = []
        self.tokenize: Callable[[dict[str, Any]], list[int]] = prompt_ids
        self.keeps_generating = False
        self.generation_seconds: Callable[[dict[str, Any]], float] | None = None
        self.open_requests = 0
        """Chat requests arrived and not yet answered to their end (whether or not their client is still there)."""
        self.sleeps = 0
        self.failed_sleeps = 0
        self._arrived = asyncio.Condition()
        self._serving = Serving(
            uvicorn.Config(self, host="127.0.0.1", port=0, lifespan="off", log_config=None, access_log=False),
            on_shutdown=lambda: None,
        )
        self.address = ""
        """``host:port``, as verl's ``server_addresses`` name a backend."""

    async def start(self, port: int = 0) -> None:
        port = self._serving.bind("127.0.0.1", port)
        self.address = f"127.0.0.1:{port}"
        assert await self._serving.start(30, endpoint=f"http://{self.address}", address=self.address)

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        await self._serving.stop(30)

    def sleep(self) -> None:
        """verl's ``async_rollout_manager.sleep()``: ``SleptUnderRequests`` while a chat request is open."""
        self.sleeps += 1
        if self.open_requests:
            self.failed_sleeps += 1
            raise SleptUnderRequests(f"{self.name} put to sleep with {self.open_requests} request(s) open")

    async def wait_received(self, count: int) -> None:
        """Until at least ``count`` requests have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive, 2**30) or b""
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        request = Received(scope["method"], scope["raw_path"].decode(), scope["query_string"], headers, body)
        async with self._arrived:
            self.received.append(request)
            self._arrived.notify_all()
        if self.fail_with is not None:
            await _send_json(send, self.fail_with, {"error": {"message": "failing", "type": "Failing", "code": 0}})
        elif scope["path"] == "/v1/models":
            card: dict[str, Any] = {"id": "stand-in", "object": "model"}
            if self.max_model_len is not None:
                card["max_model_len"] = self.max_model_len
            await _send_json(send, 200, {"object": "list", "data": [card]})
        elif scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
            self.open_requests += 1
            try:
                await self._chat(request.json(), receive, send)
            finally:
                self.open_requests -= 1
        else:
            await _send_json(send, 404, {"error": {"message": "no such route", "type": "NotFound", "code": 404}})

    async def _chat(self, parsed: dict[str, Any], receive: Receive, send: Send) -> None:
        if (refusal := self._over_context(parsed)) is not None:
            self.too_long += 1
            await _send_json(send, 400, refusal)
            return
        if self.generation_seconds is not None:
            await asyncio.sleep(self.generation_seconds(parsed))  # decoding: a client's hang-up does not stop it
        if parsed.get("stream"):
            await self._stream(parsed, receive, send)
        elif await self._held(receive):
            await _send_json(send, 200, self._completion(parsed), [(b"x-backend", self.name.encode())])

    async def _held(self, receive: Receive) -> bool:
        """Wait for the gate, if any; False when the client hung up meanwhile (unless ``keeps_generating``)."""
        if self.gate is None or self.gate.is_set():
            return True
        if self.keeps_generating:
            await self.gate.wait()
            return True
        gate = asyncio.ensure_future(self.gate.wait())
        hangup = asyncio.ensure_future(receive())
        await asyncio.wait({gate, hangup}, return_when=asyncio.FIRST_COMPLETED)
        gate.cancel()
        hangup.cancel()
        if gate.cancelled() or not gate.done():
            self.hung_up.set()
            return False
        return True

    async def _held_until_hang_up(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.hung_up.set()

    def _over_context(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """vLLM's 400 for a call over ``max_model_len``, if it is."""
        if self.max_model_len is None:
            return None
        prompt = len(self.tokenize(body))
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or max(self.max_model_len - prompt, 0)
        if prompt + asked <= self.max_model_len and prompt < self.max_model_len:
            return None
        message = (
            f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
            f"{prompt + asked} tokens ({prompt} in the messages, {asked} in the completion). "
            "Please reduce the length of the messages or completion."
        )
        return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}

    def _answer_ids(self, body: dict[str, Any]) -> list[int]:
        ids = response_ids(self.name)
        if self.answer_tokens is not None:
            prompt = len(self.tokenize(body))
            room = self.max_model_len - prompt if self.max_model_len is not None else self.answer_tokens
            asked = body.get("max_completion_tokens") or body.get("max_tokens") or room
            ids = [ids[0] + i for i in range(min(self.answer_tokens, asked))]
            self.generated.append((prompt, len(ids)))
        return ids

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = self._answer_ids(body)
        return {
            "id": self._answer_id(body),
            "object": "chat.completion",
            "created": 1,
            "model": body.get("model", "stand-in"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(f"t{i}" for i in ids)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": len(self.tokenize(body)), "completion_tokens": len(ids), "total_tokens": 0},
            "prompt_token_ids": self.tokenize(body),
            "response_token_ids": [ids],
        }

    def _answer_id(self, body: dict[str, Any]) -> str:
        """An id of its own for each request, the same for the same request (a tracer tells answers apart by it)."""
        digest = hashlib.sha256(json.dumps([self.name, body], sort_keys=True).encode()).hexdigest()
        return f"chatcmpl-{digest[:24]}"

    async def _stream(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        with_ids = self.streams_ids and bool(body.get("return_token_ids"))
        headers = [(b"content-type", b"text/event-stream"), (b"x-backend", self.name.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.stall_streams:
            await self._held_until_hang_up(receive)
            return
        ids = self._answer_ids(body)
        for position, token in enumerate(ids):
            chunk: dict[str, Any] = {
                "id": self._answer_id(body),
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body.get("model", "stand-in"),
                "choices": [{"index": 0, "delta": {"content": f"t{token} "}, "finish_reason": None}],
            }
            if with_ids:
                chunk["choices"][0]["token_ids"] = [token]
                if position == 0:
                    chunk["prompt_token_ids"] = self.tokenize(body)
            if position == len(ids) - 1:
                chunk["choices"][0]["finish_reason"] = "stop"
            event = f"data: {json.dumps(chunk)}\n\n".encode()
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if position == 0 and not await self._held(receive):
                return
            if position == 0 and self.cut_streams:
                raise ConnectionResetError("the stand-in breaks off mid-stream")
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _send_json(
    send: Send, status: int, payload: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()  # compact: a JSON round trip would change it
    start_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start_headers + (headers or [])})
    await send({"type": "http.response.body", "body": body})
