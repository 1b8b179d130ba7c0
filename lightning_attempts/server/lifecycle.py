"""The server's lifecycle: uvicorn serving in the background, bind errors, the bound port, stopping.

Upstream's ``start()`` sleeps a second and carries on whatever happened, and its ``stop()``
sleeps another. ``Serving.bind()`` binds the port before uvicorn starts, so that a port in
use raises ``ServerStartError`` before uvicorn, upstream's lifespan or anything else logs a
start-up line, and the bound port (the free one found for port 0) is known at once;
``Serving.start()`` hands uvicorn that socket and returns once it serves, or raises what
stopped it (uvicorn exits the process on a failed start: the exit becomes the error);
``Serving.stop()`` returns once uvicorn has shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable

import uvicorn

from .. import ports
from ..errors import ServerStartError
from ..hosts import is_loopback_host

logger = logging.getLogger(__package__)  # "lightning_attempts.server"


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, telling ours when shutdown begins (before it waits for open requests to end), and
    stopping what runs beside it once shut down."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown
        self.after_shutdown: list[Callable[[], Awaitable[object]]] = []

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        try:
            await super().shutdown(sockets)
        finally:
            for stop in self.after_shutdown:
                try:
                    await stop()
                except Exception:
                    logger.exception("Stopping %r with the server failed", stop)


class Serving:
    """One server's uvicorn, run in the background from ``start()`` until ``stop()``."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        self.uvicorn: uvicorn.Server = _Uvicorn(config, on_shutdown)
        """What upstream calls ``_uvicorn_server``; ``on_shutdown()`` runs as its shutdown begins."""
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    def stop_with(self, stop: Callable[[], Awaitable[object]]) -> None:
        """Await ``stop()`` on the server's loop each time uvicorn has shut down (``stop()``, a signal)."""
        assert isinstance(self.uvicorn, _Uvicorn)
        self.uvicorn.after_shutdown.append(stop)

    def bind(self, host: str, port: int) -> int:
        """Bind ``host:port`` as uvicorn would (``ports.bind``), for ``start()``; return the bound port.

        Raises ``ServerStartError`` naming the address and why, before anything is logged.
        """
        self._socket = ports.bind(host, port)
        return int(self._socket.getsockname()[1])

    async def start(self, timeout: float, *, endpoint: str, address: str) -> bool:
        """Serve on the socket ``bind()`` bound; True once serving, False if not within ``timeout`` seconds.

        Raises what stopped uvicorn before it served: ``ServerStartError`` naming
        ``address`` (``host:port``) when it exited, one naming ``endpoint`` otherwise.
        """
        sock, self._socket = self._socket, None
        if sock is None:
            raise RuntimeError("Serving.start() needs a socket from bind()")
        self._task = asyncio.create_task(self._serve(sock, address))
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise ServerStartError(f"Server at {endpoint} stopped before it started.")
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def _serve(self, sock: socket.socket, address: str) -> None:
        try:
            await self.uvicorn.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn logs why it could not start (e.g. the lifespan), then exits
            cause = exc.__context__
            reason = ports.reason(cause) if isinstance(cause, OSError) else "uvicorn exited; its log above says why"
            raise ServerStartError(f"Could not serve on {address}: {reason}") from exc
        finally:
            sock.close()  # already closed once uvicorn served it; not if it stopped before

    async def wait_stopped(self) -> None:
        """Wait until the uvicorn started by ``start()`` stops."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self, timeout: float) -> bool:
        """Shut uvicorn down and wait until it has (no fixed sleep); False when ``start()`` is not serving."""
        serving, self._task = self._task, None
        if serving is None:
            return False
        self.uvicorn.should_exit = True
        with contextlib.suppress(ServerStartError):
            await asyncio.wait_for(serving, timeout)
        logger.info("Server stopped.")
        return True


def warn_if_open(host: str, port: int, api_key: str | None) -> None:
    """At start, warn that a server without a key, bound beyond loopback, is open to anyone who reaches it."""
    if api_key is None and not is_loopback_host(host):
        logger.warning(
            "No API key set: authentication disabled on %s:%s, reachable beyond this machine; anyone who can "
            "reach it can read resources, claim tasks and post rollouts. Set one with "
            "AttemptAwareServer(api_key=...), `lightning-attempts serve --api-key`, or AGL_KEY (read by "
            "`serve` and by servers agentlightning builds under install()).",
            host,
            port,
        )
