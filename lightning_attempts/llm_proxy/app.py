"""``LlmProxy``: the ASGI application that forwards LLM calls to the backends, attempt by attempt.

``/v1/{path}`` is forwarded as upstream's proxy forwards it (old workers), with the key when
one is set. ``/rollout/{rollout_id}/attempt/{attempt_id}/v1/{path}`` needs no key (the
attempt id is an unguessable UUID4, and the URL works only while its attempt is live).

A refused call costs its caller nothing but the refusal: the key (plain calls) and
``liveness(rollout_id, attempt_id)`` (attempt-scoped calls) are checked before a byte of the
body is read; a refusal sent with more than ``bodies.DISCARDED_BYTES`` of body unread closes
the connection, so that the server does not read the rest (less is read and dropped, so that
the caller reads its answer rather than a reset). Bodies are then read within ``max_body_bytes``,
``body_timeout_seconds`` and a ``BodyBudget`` shared by all calls (``bodies``). Liveness is
asked again once the body is in, right before a backend is chosen and the call sent, with
no await in between on the proxy's side. The store answering it runs on the same event loop,
so an attempt can turn stale while the call is in flight (or while aiohttp takes a
connection); that call is not taken back, but liveness never comes back, so nothing refused
could have been stored.

The backend leg is ``forwarding.Forwarder``'s: answers pass through as they come.

Between a batch's end and the next batch (``end_step``/``drain``, ``open_step``: the daemon's
calls), every call is refused with 409 ``step_ended`` (``draining``): vLLM is about to sleep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
from starlette.types import Receive, Scope, Send

from ..keys import KeyCheck, validate_key
from .asgi import send_error
from .bodies import (
    BODY_TIMEOUT_SECONDS,
    BodyBudget,
    BodyRefused,
    ClientGone,
    OverBudget,
    TimedOut,
    TooLarge,
    declared_length,
    little_left,
    read_body,
)
from .context import REFUSED_CODE, ContextGuard
from .draining import STEP_ENDED, Drained, StepGate
from .forwarding import Call, Forwarder
from .records import CallRecord, CallRecords
from .resending import Resends
from .routing import BackendRouter, Backends
from .stats import LatencyHistogram, RefusalSummary, latency_summary
from .targets import Attempt, DotSegments, parse_target
from .token_request import asking_for_token_ids

logger = logging.getLogger(__name__)

Liveness = Callable[[str, str], "str | None"]
"""``liveness(rollout_id, attempt_id)``: None while the attempt is live, else why it is not (e.g. ``superseded``)."""

MAX_BODY_BYTES = 64 * 2**20
TIMEOUT_SECONDS = 1200.0
"""Longest wait for the backend's next bytes (verl's ``llm_timeout_seconds`` on 0.2 and 0.3)."""
CONNECT_TIMEOUT_SECONDS = 5.0
"""Longest wait for a backend's connection. A call that waited twice as long for its answer's headers has its
backend probed, the probe bounded by twice as long too (``forwarding``)."""
FIRST_BYTE_TIMEOUT_SECONDS = 60.0
"""Longest wait for a streamed answer's first chunk (queueing and prefill), before the call goes elsewhere."""
_NOT_LIVE = (("x-should-retry", "false"),)  # the openai client retries a 409 unless told not to
_UNAUTHORIZED = (("www-authenticate", "Bearer"),)
_CLOSE = (("connection", "close"),)
"""On an answer sent with much body unread: uvicorn then closes the connection instead of reading the rest."""
_RETRY = (("retry-after", "1"),)


class BackendCut(Exception):
    """The backend broke off (or the step's end cut) an answer already begun: raised to the server, which drops the
    connection.

    ``serving`` keeps uvicorn from logging it (the proxy has logged one WARNING line).
    """


class LlmProxy:
    """Forwards ``/v1`` and attempt-scoped LLM calls to ``backends()``; refuses the calls of attempts not live."""

    def __init__(
        self,
        backends: Backends,
        liveness: Liveness,
        *,
        api_key: str | None = None,
        timeout_seconds: float | None = TIMEOUT_SECONDS,
        connect_timeout_seconds: float | None = CONNECT_TIMEOUT_SECONDS,
        first_byte_timeout_seconds: float | None = FIRST_BYTE_TIMEOUT_SECONDS,
        max_body_bytes: int = MAX_BODY_BYTES,
        body_budget: BodyBudget | None = None,
        body_timeout_seconds: float | None = BODY_TIMEOUT_SECONDS,
        max_connections_per_backend: int = 0,
        records: CallRecords | None = None,
        router: BackendRouter | None = None,
        refusals: RefusalSummary | None = None,
        context: ContextGuard | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.liveness = liveness
        self.router = router if router is not None else BackendRouter(backends)
        self.records = records if records is not None else CallRecords()
        """Token ids of each live attempt's calls (``calls_of``, ``discard``, ``clear``)."""
        self.refusals = refusals if refusals is not None else RefusalSummary()
        self.context = context if context is not None else ContextGuard()
        """Caps or refuses over-long calls once given a tokenizer and a limit (``context``)."""
        self.max_body_bytes = max_body_bytes
        self.body_budget = body_budget if body_budget is not None else BodyBudget()
        """Body bytes held across all calls (``bodies.MAX_BUFFERED_BYTES`` by default)."""
        self.body_timeout_seconds = body_timeout_seconds
        key = validate_key(api_key)
        self._key = KeyCheck(key) if key is not None else None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_seconds, sock_read=timeout_seconds)
        self._forwarder = Forwarder(
            timeout,
            max_connections_per_backend,
            clock,
            first_byte_timeout=first_byte_timeout_seconds,
            probe_after=None if connect_timeout_seconds is None else 2 * connect_timeout_seconds,
            probe_timeout=2 * (connect_timeout_seconds or CONNECT_TIMEOUT_SECONDS),
        )
        self._clock = clock
        self.latency = LatencyHistogram()
        """Time each forwarded call spent in the proxy: its whole time less its waits on the backend."""
        self.counts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.gate = StepGate(clock)
        """Whether the step is open, and the calls in flight to the backends (``draining``)."""

    @property
    def requires_key(self) -> bool:
        """Whether plain ``/v1`` calls need the key."""
        return self._key is not None

    # -- what the daemon calls ---------------------------------------------------------

    def forget(self, rollout_id: str, attempt_id: str) -> None:
        """Forget the backend of an attempt (over): its next call, if any, is routed afresh."""
        self.router.forget(Attempt(rollout_id, attempt_id))

    def calls_of(self, rollout_id: str, attempt_id: str) -> list[CallRecord]:
        """The recorded calls of an attempt (see ``CallRecords``)."""
        return self.records.calls_of(rollout_id, attempt_id)

    def discard(self, rollout_id: str, attempt_id: str) -> None:
        self.records.discard(rollout_id, attempt_id)

    def clear(self) -> None:
        """Forget every attempt's recorded calls."""
        self.records.clear()

    def end_step(self) -> int:
        """The batch is done: refuse every call until ``open_step``; the number of calls in flight."""
        return self.gate.close()

    def open_step(self) -> None:
        """A batch is set up: take calls again."""
        self.gate.open()

    async def drain(self, timeout: float) -> Drained:
        """End the step; wait up to ``timeout`` seconds for the calls in flight, then cut those left."""
        return await self.gate.drain(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters since the start, as a plain dict (``stats.latency_between`` takes a window's latency)."""
        summary = latency_summary(self.latency.counts, self.latency.sum)
        return {
            "forwarded": self.counts["forwarded_plain"] + self.counts["forwarded_attempt"],
            **{name: self.counts[name] for name in _COUNTERS},
            "refused": sum(self.refused.values()),
            "refused_by_reason": dict(self.refused),
            "in_flight": sum(self.router.in_flight().values()),
            "body_bytes_held": self.body_budget.held,
            "routed_attempts": self.router.routes(),
            "resent": self.router.resent,
            **self.router.health.stats(),
            "added_latency_p50_ms": summary["p50_ms"],
            "added_latency_p99_ms": summary["p99_ms"],
            "added_latency_sum_s": self.latency.sum,
            "added_latency_count": self.latency.count,
            "added_latency_buckets": list(self.latency.counts),
            **self.records.stats(),
            **self.context.stats(),
            **self.gate.stats(),
        }

    async def aclose(self) -> None:
        """Close the connections to the backends (after the server stopped); log the refusals not yet logged."""
        self.refusals.flush()
        self.context.close()
        await self._forwarder.aclose()

    # -- serving -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # served with lifespan="off"; no websockets
        started = self._clock()
        unread = () if little_left(scope["headers"]) else _CLOSE  # for a refusal before the body is read
        try:
            target = parse_target(scope.get("raw_path") or scope["path"].encode())
        except DotSegments:
            message = "Dot segments ('.', '..') are not allowed in the path"
            await self._refuse(send, 400, "dot_segments", "invalid_request_error", message, unread)
            return
        attempt = target.attempt if target is not None else None
        if attempt is None and self._key is not None and not self._key.presented(scope["headers"]):
            await self._refuse(
                send, 401, "unauthorized", "invalid_request_error", "Invalid or missing API key", _UNAUTHORIZED + unread
            )
            return
        if target is None:
            headers = tuple((name.encode(), value.encode()) for name, value in unread)
            await send_error(
                send, 404, "Not found: use /v1/...", type_="invalid_request_error", code="not_found", headers=headers
            )
            return
        if self.gate.closed:
            await self._step_ended(send, unread)
            return
        if attempt is not None and not await self._live(send, attempt, unread):  # before a byte of the body is read
            return
        try:
            body = await read_body(
                receive,
                declared_length(scope["headers"]),
                limit=self.max_body_bytes,
                budget=self.body_budget,
                timeout_seconds=self.body_timeout_seconds,
            )
        except BodyRefused as refused:
            await self._refuse_body(send, refused, unread)
            return
        held = len(body)
        if attempt is not None:  # its calls are recorded: a stream is asked for its token ids (the old body freed)
            body = asking_for_token_ids(target.upstream_path, body)
        try:
            await self._forward(scope, receive, send, target.upstream_path, attempt, body, started)
        finally:
            self.body_budget.give(held)

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        attempt: Attempt | None,
        body: bytes,
        started: float,
    ) -> None:
        checked = await self.context.check(path, body)  # may tokenize in a thread: liveness is asked after it
        if checked.refusal is not None:
            await self._refuse(send, 400, REFUSED_CODE, "invalid_request_error", checked.refusal, param=checked.param)
            return
        body = checked.body
        if attempt is not None and not await self._live(send, attempt):  # again, right before the backend is chosen
            return
        if self.gate.closed:  # no await from here to the call counted in flight
            await self._step_ended(send)
            return
        entry = self.gate.enter(attempt)
        try:
            await self._send_on(scope, receive, send, path, attempt, body, started, entry.call)
        finally:
            self.gate.leave(entry)

    async def _send_on(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        attempt: Attempt | None,
        body: bytes,
        started: float,
        call: Call,
    ) -> None:
        route = Resends(self.router, attempt)
        backend = route.first()
        if backend is None:
            self.counts["no_backend"] += 1
            await send_error(send, 503, "No backend LLM server available", type_="server_error", code="no_backend")
            return
        query = scope["query_string"]
        target_path = path + (f"?{query.decode('latin-1')}" if query else "")
        call = await self._forwarder.forward(
            scope,
            receive,
            send,
            backend,
            route,
            target_path,
            body,
            strip_keys=self._key is not None,
            record=attempt is not None,
            call=call,
        )
        backend = call.backend
        ended = self._clock()
        self.latency.add(ended - started - call.waited)
        if call.status:  # the backend answered: the call reached it
            self.counts["forwarded_attempt" if attempt is not None else "forwarded_plain"] += 1
        if call.client_gone:
            self.counts["client_disconnected"] += 1
        if call.cut:
            await self._cut(send, call)
        elif call.client_gone:
            pass
        elif call.error is not None:
            self._failed(backend, attempt, call)
        elif attempt is not None and 200 <= call.status < 300:  # an error answer has no token ids to train on
            record = CallRecord.of(
                scope["method"], path, call.status, call.streamed, backend, call.tokens, seconds=ended - started
            )
            self.records.add(attempt, record)

    async def _live(self, send: Send, attempt: Attempt, headers: tuple[tuple[str, str], ...] = ()) -> bool:
        """Whether ``attempt`` is live; if not, forget its route and answer 409."""
        reason = self._why_not_live(attempt)
        if reason is None:
            return True
        self.router.forget(attempt)
        self.counts["refused_not_live"] += 1
        message = f"Attempt {attempt.attempt_id} of rollout {attempt.rollout_id} is no longer live: {reason}"
        await self._refuse(send, 409, reason, "attempt_not_live", message, _NOT_LIVE + headers)
        return False

    async def _step_ended(self, send: Send, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.gate.refused += 1
        message = "The training step has ended: no LLM call is taken until the next batch (vLLM is asleep)"
        await self._refuse(send, 409, STEP_ENDED, STEP_ENDED, message, _NOT_LIVE + headers)

    async def _cut(self, send: Send, call: Call) -> None:
        """The step's end cut the call: 409 ``step_ended`` if its answer had not begun, else the connection drops."""
        if call.started:
            raise BackendCut(call.backend)
        if not call.client_gone:  # counted as cut, not refused
            message = "The training step has ended: this LLM call was cut (vLLM is going to sleep)"
            headers = tuple((name.encode(), value.encode()) for name, value in _NOT_LIVE)
            await send_error(send, 409, message, type_=STEP_ENDED, code=STEP_ENDED, headers=headers)

    async def _refuse_body(self, send: Send, refused: BodyRefused, unread: tuple[tuple[str, str], ...]) -> None:
        """Answer a body not read whole (nothing to answer when its client left)."""
        if isinstance(refused, ClientGone):
            self.counts["client_disconnected"] += 1
        elif isinstance(refused, TooLarge):
            await self._refuse(send, 413, "too_large", "invalid_request_error", "Request body too large", _CLOSE)
        elif isinstance(refused, OverBudget):
            message = "The LLM proxy holds too many request bodies at once: retry shortly"
            await self._refuse(send, 503, "body_budget", "server_error", message, _RETRY + unread)
        else:
            assert isinstance(refused, TimedOut)
            message = f"Request body not received within {self.body_timeout_seconds:g} s"
            await self._refuse(send, 408, "body_timeout", "invalid_request_error", message, _CLOSE)

    def _failed(self, backend: str, attempt: Attempt | None, call: Call) -> None:
        """Count and log a backend that could not be reached or broke off; cut an answer that began short."""
        timed_out = isinstance(call.error, asyncio.TimeoutError)
        self.counts["timed_out_upstream" if timed_out else "failed_upstream"] += 1
        name = type(call.error).__name__
        what = "timed out" if timed_out else "failed"
        logger.warning("LLM backend %s %s%s: %s", backend, what, " mid-answer" if call.started else "", name)
        if call.started and call.error is not None:
            raise BackendCut(backend) from call.error  # only dropping the connection tells the client it is cut short

    def _why_not_live(self, attempt: Attempt) -> str | None:
        try:
            return self.liveness(attempt.rollout_id, attempt.attempt_id)
        except Exception:
            logger.exception("Liveness check failed for attempt %s of %s", attempt.attempt_id, attempt.rollout_id)
            return "liveness_error"

    async def _refuse(
        self,
        send: Send,
        status: int,
        reason: str,
        type_: str,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        param: str | None = None,
    ) -> None:
        self.refused[reason] += 1
        self.refusals.refused(reason)
        encoded = tuple((name.encode(), value.encode()) for name, value in headers)
        await send_error(send, status, message, type_=type_, code=reason, headers=encoded, param=param)


_COUNTERS = (
    "forwarded_plain",
    "forwarded_attempt",
    "failed_upstream",
    "timed_out_upstream",
    "client_disconnected",
    "no_backend",
    "refused_not_live",
)
