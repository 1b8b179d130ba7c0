"""Helpers for tests and demos: a manual clock, a server run in a thread of its own, a null tracer.

A server in its own thread (with its own event loop, as verl's daemon runs it) lets
synchronous upstream clients and runners talk to it from the caller's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine, Generator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from .compat import AgentLightningServer

T = TypeVar("T")
S = TypeVar("S", bound=AgentLightningServer)


class ManualClock:
    """A monotonic clock that moves only when told to: ``clock.advance(seconds)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        with self._lock:
            self._now += seconds


class ServerThread(Generic[S]):
    """A started server, its event loop running in a daemon thread."""

    def __init__(self, server: S) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lightning-attempts-server", daemon=True)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the server's loop; return a future of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the server's loop and return its result."""
        return self.submit(coro).result(timeout)

    def run(self, function: Callable[[], T], timeout: float = 30.0) -> T:
        """Call a synchronous server or store method on the server's loop (the store is not thread-safe)."""

        async def on_loop() -> T:
            return function()

        return self.call(on_loop(), timeout)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        try:
            self.call(self._start(), timeout)
        except BaseException:
            self.close()
            raise

    async def _start(self) -> None:
        await self.server.start()
        if not self.server.startup_event.is_set():  # upstream's start() does not check
            raise RuntimeError(f"server at {self.server.endpoint} did not start")

    def close(self, timeout: float = 30.0) -> None:
        if self.loop.is_running():
            try:
                self.call(self.server.stop(), timeout)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(timeout)
        if not self.loop.is_running():
            self.loop.close()


@contextmanager
def serve_in_thread(server: S) -> Generator[ServerThread[S]]:
    """Start ``server`` in a thread of its own; stop it and the thread on exit."""
    running = ServerThread(server)
    running.start()
    try:
        yield running
    finally:
        running.close()


class NullTracer:
    """The tracer interface the legacy runners call (0.1: ``trace_context``; 0.2+: also async and sync)."""

    def trace_context(self, name: str | None = None, **_: Any) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    _trace_context_sync = trace_context

    def get_last_trace(self) -> list[Any]:
        return []

    def init(self, *args: Any, **kwargs: Any) -> None: ...
    def init_worker(self, *args: Any, **kwargs: Any) -> None: ...
    def teardown_worker(self, *args: Any, **kwargs: Any) -> None: ...
    def teardown(self, *args: Any, **kwargs: Any) -> None: ...
