"""The backend leg of a call: send it over a pooled aiohttp connection, pass the answer through as it comes.

A body with a length is read and sent whole; anything else (server-sent events) chunk by
chunk, each chunk as it arrives. Token ids are read from the answer when asked. A client
that hangs up does not end the call: agentlightning's patched vLLM server does not abort a
request when its client goes away, so closing the backend connection would leave vLLM
generating while the proxy counts nothing in flight. The answer is read to its end instead
(bounded by the read timeout) and dropped; the call stays in flight meanwhile (``draining``
waits for it before vLLM sleeps). Only ``Call.cut`` (the step's wait bound passed) ends a
call early. ``Call.waited`` adds up the time spent waiting on the backend.

A call goes to one backend after another (``Route``) while no byte of the answer has
reached the client: the backend could not be reached, broke off, answered 502, 503 or 504,
did not answer a liveness probe while the call waited for its headers, or a streamed
answer's first chunk did not come within ``first_byte_timeout`` (unless no other backend is
left to try: a late first chunk is better than none). Once the answer's headers
went to the client, a failure cuts the answer short: it is never sent twice.

Waiting for the headers: vLLM sends a whole answer's headers with its last byte, after the
whole generation, so their wait cannot be bounded below the read timeout. Instead, a call
that waited ``probe_after`` seconds has its backend probed (``GET /v1/models``, any answer
below 500 within ``probe_timeout``, one probe per backend at a time, a verdict kept for
``probe_after``): a backend that accepts calls and never answers is found within seconds,
a busy one keeps its calls. A streamed answer's headers come at once, its first chunk after
the prompt's prefill: that first chunk is held to ``first_byte_timeout`` from the call's start.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from .asgi import send_error
from .headers import request_headers, response_headers
from .tokens import StreamTokens, Tokens, tokens_of_answer

BACKEND_KEEPALIVE_SECONDS = 4.0
"""Below uvicorn's (vLLM's) 5 s, so that the proxy never reuses a connection the backend is closing."""
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
RESENT_STATUSES = frozenset({502, 503, 504})
"""Answers that say the backend (or a gateway before it) failed, not the call: counted against it, re-sent."""
PROBE_PATH = "/v1/models"
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")  # only what the client sent
_READ_TIMEOUT: type[BaseException] | None = getattr(aiohttp, "SocketTimeoutError", None)  # aiohttp 3.10+
_CONNECT_TIMEOUT: type[BaseException] | None = getattr(aiohttp, "ConnectionTimeoutError", None)


class BackendDown(aiohttp.ServerConnectionError):
    """The backend did not answer a liveness probe while the call waited for its headers."""


class FirstByteTimeout(aiohttp.ServerTimeoutError):
    """A streamed answer's first chunk did not come within ``first_byte_timeout``."""


@dataclass(slots=True)
class Call:
    """One forwarded call: what became of it, shared with its disconnect watcher."""

    started: bool = False
    """The answer's headers went to the client."""
    answered: bool = False
    """The answer is complete (or being completed): a hang-up from now on changes nothing."""
    client_gone: bool = False
    """The client hung up: the answer is still read to its end (the backend works on it), and dropped."""
    cut: bool = False
    """Ended by the proxy before its answer's end (``draining``): its backend connection is closed."""
    waited: float = 0.0
    status: int = 0
    streamed: bool = False
    tokens: Tokens = field(default_factory=Tokens)
    error: BaseException | None = None
    """Why the backend could not be reached or broke off (a 502 or 504 was sent unless ``started``)."""
    backend: str = ""
    """The backend of the last try."""
    failure: str | None = None
    """Why the last try failed the backend (``connect_error``, ``status_503``, ...), counted against it."""
    resend: bool = False
    """The last try failed before any byte reached the client, and it may go to another backend."""
    tries: int = 0

    def next_try(self, backend: str) -> None:
        self.backend, self.tries = backend, self.tries + 1
        self.error, self.failure, self.resend, self.status, self.streamed = None, None, False, 0, False


class Route(Protocol):
    """The backends a call goes to, one try after another (``resending.Resends``)."""

    def may_resend(self) -> bool:
        """Whether a failed try, before any byte reached the client, may go to another backend."""
        ...

    def next(self, call: Call) -> str | None:
        """The try on ``call.backend`` ended: the backend for the next try, if it is to be re-sent."""
        ...


class Forwarder:
    """Sends calls to backends over one aiohttp session, its connections pooled per backend."""

    def __init__(
        self,
        timeout: aiohttp.ClientTimeout,
        max_connections_per_backend: int,
        clock: Any,
        *,
        first_byte_timeout: float | None = None,
        probe_after: float | None = None,
        probe_timeout: float = 10.0,
    ) -> None:
        self._timeout = timeout
        self._max_per_backend = max_connections_per_backend
        self._clock = clock
        self._first_byte_timeout = first_byte_timeout
        self._probe_after = probe_after
        self._probe_timeout = probe_timeout
        self._probes: dict[str, asyncio.Future[bool]] = {}
        self._alive_at: dict[str, float] = {}
        """When each backend last answered a probe (the loop's time)."""
        self._session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        first: str,
        route: Route,
        path: str,
        body: bytes,
        *,
        strip_keys: bool,
        record: bool,
        call: Call | None = None,
    ) -> Call:
        """Send the call to ``first``, then ``route``'s next backends (``path``: ``/v1/...?query``); the answer to
        the client. ``call``: the record to fill, if the caller keeps one (to cut it)."""
        call = call if call is not None else Call()
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(lambda done: _on_disconnect(done, call))
        headers = request_headers(scope["headers"], strip_keys=strip_keys, identity=record)
        backend: str | None = first
        try:
            while backend is not None:
                call.next_try(backend)
                resend = route.may_resend() and not call.client_gone  # nobody is left to answer
                try:
                    await self._exchange(scope["method"], send, backend, path, headers, body, call, record, resend)
                finally:
                    backend = route.next(call)
                if call.resend and backend is None:  # the backends changed meanwhile: none left to try
                    call.resend = False
                    await _refuse_failed(send, call, call.error or aiohttp.ServerConnectionError(call.failure))
        except asyncio.CancelledError:
            if not call.cut:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
        finally:
            call.answered = True
            watcher.cancel()
        return call

    async def _exchange(
        self,
        method: str,
        send: Send,
        backend: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        call: Call,
        record: bool,
        resend: bool,
    ) -> None:
        waiting = self._clock()
        loop = asyncio.get_running_loop()
        first_byte_by = None if self._first_byte_timeout is None else loop.time() + self._first_byte_timeout
        request = self._client().request(
            method,
            URL(f"http://{backend}{path}", encoded=True),
            data=body or None,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        )
        try:
            response = await self._headers(asyncio.ensure_future(request), backend)
        except UPSTREAM_ERRORS as error:
            call.waited += self._clock() - waiting
            await _failed(send, call, error, resend)
            return
        call.waited += self._clock() - waiting
        call.status = response.status
        try:
            if response.status in RESENT_STATUSES:
                call.failure = f"status_{response.status}"
                if resend:
                    call.resend = True
                    return
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
            waiting = self._clock()
            first = response.content.readany()
            if first_byte_by is not None and resend and response.content_type == "text/event-stream":
                first = asyncio.wait_for(first, max(first_byte_by - loop.time(), 0.0))
            try:
                chunk = await first
            except asyncio.TimeoutError as error:
                raise FirstByteTimeout(f"no first chunk within {self._first_byte_timeout}s") from error
            finally:
                call.waited += self._clock() - waiting
            call.started = True  # the headers go with the first chunk: until then, the call may be re-sent
            await send(start)
            collector = StreamTokens() if record else None
            while chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if collector is not None:
                    collector.feed(chunk)
                waiting = self._clock()
                chunk = await response.content.readany()
                call.waited += self._clock() - waiting
            call.answered = True
            await send({"type": "http.response.body", "body": b""})
            if collector is not None:
                call.tokens = collector.tokens
        except UPSTREAM_ERRORS as error:
            await _failed(send, call, error, resend)
        finally:
            response.release()

    async def _headers(self, pending: asyncio.Future[aiohttp.ClientResponse], backend: str) -> aiohttp.ClientResponse:
        """The answer's headers; ``BackendDown`` once the backend fails a probe while they are awaited."""
        try:
            while True:
                await asyncio.wait({pending}, timeout=self._probe_after)
                if pending.done():
                    return pending.result()
                if not await self._alive(backend):
                    raise BackendDown(f"no answer to a probe within {self._probe_timeout}s")
        except BaseException:
            if not pending.done():
                pending.cancel()
            elif not pending.cancelled() and pending.exception() is None:
                pending.result().release()
            raise

    async def _alive(self, backend: str) -> bool:
        """Whether ``backend`` answered a probe lately, or answers one now (one probe per backend at a time)."""
        loop = asyncio.get_running_loop()
        answered = self._alive_at.get(backend)
        if answered is not None and self._probe_after is not None and loop.time() - answered < self._probe_after:
            return True
        probe = self._probes.get(backend)
        if probe is None:
            probe = self._probes[backend] = asyncio.ensure_future(self._probe(backend))
            probe.add_done_callback(lambda _: self._probes.pop(backend, None))
        return await asyncio.shield(probe)

    async def _probe(self, backend: str) -> bool:
        if self._probe_session is None:  # its own connections: a full pool of calls never delays a probe
            self._probe_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                timeout=aiohttp.ClientTimeout(total=self._probe_timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        try:
            async with self._probe_session.get(f"http://{backend}{PROBE_PATH}") as response:
                alive = response.status < 500
        except UPSTREAM_ERRORS:
            alive = False
        if alive:
            self._alive_at[backend] = asyncio.get_running_loop().time()
        return alive

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
        sessions = (self._session, self._probe_session)
        self._session = self._probe_session = None
        for probe in list(self._probes.values()):
            probe.cancel()
        for session in sessions:
            if session is not None:
                await session.close()


def failure_of(error: BaseException) -> str:
    """What a try's error says of its backend: ``connect_error``, ``timeout``, ``down``, ``first_byte_timeout``, ...

    Each counts against the backend."""
    if isinstance(error, FirstByteTimeout):
        return "first_byte_timeout"
    if isinstance(error, BackendDown):
        return "no_probe_answer"
    if isinstance(error, aiohttp.ClientConnectorError):
        return "connect_error"
    if _CONNECT_TIMEOUT is not None and isinstance(error, _CONNECT_TIMEOUT):
        return "connect_timeout"
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    return "broke_off"


async def _failed(send: Send, call: Call, error: BaseException, resend: bool) -> None:
    """A try failed: count it against the backend; re-send the call if nothing reached the client yet and it may."""
    call.failure = failure_of(error)
    call.error = error
    waited_the_read_timeout = _READ_TIMEOUT is not None and isinstance(error, _READ_TIMEOUT)
    if resend and not call.started and not waited_the_read_timeout:  # that wait is not spent twice
        call.resend = True
        return
    await _refuse_failed(send, call, error)


async def _refuse_failed(send: Send, call: Call, error: BaseException) -> None:
    """Note why the backend failed; answer 502 (504 on a timeout) unless the answer began."""
    call.error = error
    if not call.started:
        status, code = (
            (504, "backend_timeout") if isinstance(error, asyncio.TimeoutError) else (502, "backend_unreachable")
        )
        await send_error(send, status, f"LLM backend {code.split('_')[1]}", type_="server_error", code=code)


def _on_disconnect(watcher: asyncio.Future[Message], call: Call) -> None:
    """The client hung up before its answer was complete: note it; the backend's answer is still read to its end."""
    if watcher.cancelled() or call.answered or watcher.exception() is not None:
        return
    if watcher.result()["type"] == "http.disconnect":
        call.client_gone = True
