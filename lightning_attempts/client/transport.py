"""The client's transport: pooled httpx connections, and the retry policy; it sends what the protocol steps ask.

One sync ``httpx.Client`` per process and one ``httpx.AsyncClient`` per event loop, built on
first use with the client's timeout and headers (upstream's ``X-AgentLightning-Client``, and
``Authorization: Bearer <key>`` when the client has a key). The client builds a new
``Transport`` after a fork (the upstream trainer forks its workers), so that no pooled
connection crosses it.

A request the step tries more than once (a submission: ``Send.attempts``) is retried when it
fails in transport or the server fails (5xx), with jittered exponential backoff, never on a
4xx (a retry of a stored attempt answers ``duplicate``); the last failure is raised.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from .protocol import Send

logger = logging.getLogger(__package__)


def is_transient(error: BaseException) -> bool:
    """Worth retrying: the request may not have reached the server, or the server failed."""
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code >= 500
    return isinstance(error, httpx.TransportError)


def logging_retries(request: Send) -> Callable[[RetryCallState], None]:
    """tenacity's ``before_sleep`` for ``request``: a warning naming what failed, why, and which retry follows."""
    action = request.action or f"{request.method} {request.url}"

    def log(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        logger.warning("%s failed (%s); retry %d of %d", action, error, state.attempt_number, request.attempts - 1)

    return log


RETRY: dict[str, Any] = {
    "wait": wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.1),
    "retry": retry_if_exception(is_transient),
    "reraise": True,
}
"""tenacity's arguments for a retried request, but its ``stop`` (the tries) and ``before_sleep`` (the log), which
each request sets."""


class Timed(Protocol):
    """What the transport reads of its client (``AttemptAwareClient``) when it builds a pool."""

    timeout: float


class Transport:
    """One client's pooled connections in this process: a sync client, and an async one per event loop."""

    def __init__(self, client: Timed, headers: Mapping[str, str]) -> None:
        self._client: Timed = weakref.proxy(client)  # the client holds its transport, not the other way round
        self._headers = headers
        self._lock = threading.Lock()
        self.sync_client: httpx.Client | None = None
        self.loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def http(self) -> httpx.Client:
        """This process's sync client."""
        if self.sync_client is None:
            with self._lock:
                if self.sync_client is None:
                    self.sync_client = httpx.Client(timeout=self._client.timeout, headers=self._headers)
        return self.sync_client

    def ahttp(self) -> httpx.AsyncClient:
        """The running event loop's async client."""
        loop = asyncio.get_running_loop()
        client = self.loop_clients.get(loop)
        if client is None or client.is_closed:
            client = self.loop_clients[loop] = httpx.AsyncClient(timeout=self._client.timeout, headers=self._headers)
        return client

    def send(self, request: Send) -> httpx.Response:
        """Send ``request`` from this process's client, tried up to ``request.attempts`` times."""
        if request.attempts == 1:
            return self._send(request)
        retrying = Retrying(stop=stop_after_attempt(request.attempts), before_sleep=logging_retries(request), **RETRY)
        for attempt in retrying:
            with attempt:
                return _failed_by_the_server(self._send(request))
        raise AssertionError("unreachable: tenacity returns the result or raises the last failure")

    async def asend(self, request: Send) -> httpx.Response:
        """Send ``request`` from the running event loop's client, tried up to ``request.attempts`` times."""
        if request.attempts == 1:
            return await self._asend(request)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(request.attempts), before_sleep=logging_retries(request), **RETRY
        )
        async for attempt in retrying:
            with attempt:
                return _failed_by_the_server(await self._asend(request))
        raise AssertionError("unreachable: tenacity returns the result or raises the last failure")

    def _send(self, request: Send) -> httpx.Response:
        http = self.sync_client or self.http()
        if request.timeout is None:
            return http.request(request.method, request.url, params=request.params, json=request.json)
        return http.request(
            request.method, request.url, params=request.params, json=request.json, timeout=request.timeout
        )

    async def _asend(self, request: Send) -> httpx.Response:
        http = self.ahttp()
        if request.timeout is None:
            return await http.request(request.method, request.url, params=request.params, json=request.json)
        return await http.request(
            request.method, request.url, params=request.params, json=request.json, timeout=request.timeout
        )

    def close(self) -> None:
        """Close the sync client's connections (a later request opens new ones)."""
        if self.sync_client is not None:
            self.sync_client.close()
            self.sync_client = None

    async def aclose(self) -> None:
        """Close the running event loop's connections."""
        client = self.loop_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _failed_by_the_server(response: httpx.Response) -> httpx.Response:
    """``response``, unless the server failed (5xx): then an ``HTTPStatusError``, to retry."""
    if response.status_code >= 500:
        response.raise_for_status()
    return response
