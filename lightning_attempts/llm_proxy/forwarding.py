"""The backend leg of a call: send it over a pooled aiohttp connection, pass the answer through as it comes.

A body with a length is read and sent whole; anything else (server-sent events) chunk by
chunk, each chunk as it arrives. Token ids are read from the answer when asked. A client
that hangs up cancels the call, which closes the backend connection (vLLM then stops
generating). ``Call.waited`` adds up the time spent waiting on the backend.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from .asgi import send_error
from .headers import request_headers, response_headers
from .tokens import StreamTokens, Tokens, tokens_of_answer

BACKEND_KEEPALIVE_SECONDS = 4.0
"""Below uvicorn's (vLLM's) 5 s, so that the proxy never reuses a connection the backend is closing."""
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")  # only what the client sent


@dataclass(slots=True)
class Call:
    """One forwarded call: what became of it, shared with its disconnect watcher."""

    started: bool = False
    """The answer's headers went to the client."""
    answered: bool = False
    """The answer is complete (or being completed): a hang-up from now on changes nothing."""
    client_gone: bool = False
    waited: float = 0.0
    status: int = 0
    streamed: bool = False
    tokens: Tokens = field(default_factory=Tokens)
    error: BaseException | None = None
    """Why the backend could not be reached or broke off (a 502 or 504 was sent unless ``started``)."""


class Forwarder:
    """Sends calls to backends over one aiohttp session, its connections pooled per backend."""

    def __init__(self, timeout: aiohttp.ClientTimeout, max_connections_per_backend: int, clock: Any) -> None:
        self._timeout = timeout
        self._max_per_backend = max_connections_per_backend
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, url: str, body: bytes, *, strip_keys: bool, record: bool
    ) -> Call:
        """Send the call to ``url`` (``http://backend/v1/...?query``) and its answer to the client."""
        call = Call()
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(lambda done: _on_disconnect(done, task, call))
        headers = request_headers(scope["headers"], strip_keys=strip_keys, identity=record)
        try:
            await self._exchange(scope["method"], send, url, headers, body, call, record)
        except asyncio.CancelledError:
            if not call.client_gone:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
        finally:
            call.answered = True
            watcher.cancel()
        return call

    async def _exchange(
        self, method: str, send: Send, url: str, headers: list[tuple[str, str]], body: bytes, call: Call, record: bool
    ) -> None:
        waiting = self._clock()
        try:
            response = await self._client().request(
                method,
                URL(url, encoded=True),
                data=body or None,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
            )
        except UPSTREAM_ERRORS as error:
            call.waited += self._clock() - waiting
            await _refuse_failed(send, call, error)
            return
        call.waited += self._clock() - waiting
        call.status = response.status
        try:
            answer_headers = response_headers(response.raw_headers)
            call.streamed = response.content_length is None or response.content_type == "text/event-stream"
            start: Message = {"type": "http.response.start", "status": response.status, "headers": answer_headers}
            if not call.streamed:
                waiting = self._clock()
                data = await response.read()
                call.waited += self._clock() - waiting
                call.answered = call.started = True
                await send(start)
                await send({"type": "http.response.body", "body": data})
                if record:
                    call.tokens = tokens_of_answer(data)
                return
            call.started = True
            await send(start)
            collector = StreamTokens() if record else None
            while True:
                waiting = self._clock()
                chunk = await response.content.readany()
                call.waited += self._clock() - waiting
                if not chunk:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if collector is not None:
                    collector.feed(chunk)
            call.answered = True
            await send({"type": "http.response.body", "body": b""})
            if collector is not None:
                call.tokens = collector.tokens
        except UPSTREAM_ERRORS as error:
            await _refuse_failed(send, call, error)
        finally:
            response.release()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self._max_per_backend, keepalive_timeout=BACKEND_KEEPALIVE_SECONDS
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _refuse_failed(send: Send, call: Call, error: BaseException) -> None:
    """Note why the backend failed; answer 502 (504 on a timeout) unless the answer began."""
    call.error = error
    if not call.started:
        status, code = (
            (504, "backend_timeout") if isinstance(error, asyncio.TimeoutError) else (502, "backend_unreachable")
        )
        await send_error(send, status, f"LLM backend {code.split('_')[1]}", type_="server_error", code=code)


def _on_disconnect(watcher: asyncio.Future[Message], task: asyncio.Task[Any], call: Call) -> None:
    """The client hung up before its answer was complete: cancel the call (and so the backend's work)."""
    if watcher.cancelled() or call.answered or watcher.exception() is not None:
        return
    if watcher.result()["type"] == "http.disconnect":
        call.client_gone = True
        task.cancel()
