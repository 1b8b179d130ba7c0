"""``AttachedProxy``: an ``LlmProxy`` attached to an ``AttemptAwareServer``, serving beside it.

verl's daemon (v0) starts one in place of upstream's Flask proxy, on upstream's port (its
``proxy_port``) and on ``0.0.0.0``. It serves on the task server's event loop: the store it
asks whether an attempt is live is not thread-safe, and is asked there, synchronously, as
every method here runs. The server names the proxy's port in
the tasks it hands out, so that shim workers call it attempt by attempt; the proxy stops when
the server stops. Its key is the server's (``AGL_KEY``, or the server's ``api_key``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..server import AttemptAwareServer
from .app import LlmProxy
from .draining import Drained
from .records import CallRecord
from .routing import Backends
from .serving import ProxyServer, serve_proxy

HOST = "0.0.0.0"
"""Where upstream's Flask proxy listens (and so ours): workers on other hosts reach it."""


class AttachedProxy:
    """One server's LLM proxy: ``start()`` serves it on ``host:port``, the server's stop stops it."""

    def __init__(
        self, server: AttemptAwareServer, backends: Backends, port: int, timeout_seconds: float, *, host: str = HOST
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.proxy = LlmProxy(
            backends, server.liveness, api_key=server.options.api_key, timeout_seconds=timeout_seconds
        )
        self._served: ProxyServer | None = None
        server.stop_with_server(self.stop)

    async def start(self) -> None:
        """Serve on ``port`` (``ServerStartError`` if it cannot); from now on, tasks handed out name it."""
        self._served = await serve_proxy(self.proxy, self.host, self.port)
        self.port = self._served.port  # the bound one, when asked for port 0
        self.server.llm_proxy_port = self.port
        self.server.llm_proxy_readout = self  # the dashboard and /metrics show its figures

    async def stop(self) -> None:
        """Stop serving (the server stopped): tasks no longer name it, connections to the backends close."""
        self.server.llm_proxy_port = None
        if self.server.llm_proxy_readout is self:
            self.server.llm_proxy_readout = None
        served, self._served = self._served, None
        if served is not None:
            await served.stop()

    def stats(self) -> dict[str, Any]:
        """The proxy's counters since it started (``LlmProxy.stats``)."""
        return self.proxy.stats()

    def call_summaries(self, rollout_id: str, attempt_id: str) -> list[dict[str, Any]]:
        """An attempt's recorded calls, without their token ids (their counts instead): for the dashboard."""
        return [
            {
                "method": call.method,
                "path": call.path,
                "status": call.status,
                "streamed": call.streamed,
                "backend": call.backend,
                "seconds": call.seconds,
                "prompt_tokens": None if call.prompt_token_ids is None else len(call.prompt_token_ids),
                "response_tokens": None
                if call.response_token_ids is None
                else sum(len(ids) for ids in call.response_token_ids),
            }
            for call in self.proxy.calls_of(rollout_id, attempt_id)
        ]

    def stored_calls(self, rollout_ids: Iterable[str]) -> dict[str, list[CallRecord]]:
        """For each of ``rollout_ids`` whose stored result is credited to an attempt, that attempt's recorded calls
        (those with none left out): never another attempt's."""
        store = self.server.store
        found: dict[str, list[CallRecord]] = {}
        for rollout_id in rollout_ids:
            attempt_id = store.stored_attempt(rollout_id)
            if attempt_id is not None and (calls := self.proxy.calls_of(rollout_id, attempt_id)):
                found[rollout_id] = calls
        return found

    def log_refusals(self) -> None:
        """Log the calls refused since the last summary now (a step ends), not up to a minute later."""
        self.proxy.refusals.flush()

    def forget(self) -> None:
        """Forget every attempt's recorded calls (a step's, once used; or before a batch is queued)."""
        self.proxy.clear()

    def open_step(self) -> None:
        """A batch is set up: take LLM calls again."""
        self.proxy.open_step()

    def end_step(self) -> int:
        """The batch is done: refuse every LLM call until ``open_step``; the number in flight."""
        return self.proxy.end_step()

    async def drain(self) -> Drained:
        """End the step; wait for the calls in flight, at most the server's ``llm_drain_timeout_seconds``, then cut
        those left (``draining``)."""
        return await self.proxy.drain(self.server.options.llm_drain_timeout_seconds)
