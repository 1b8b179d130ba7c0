"""The server's lifecycle: uvicorn serving in the background, bind errors, the bound port, stopping.

Upstream's ``start()`` sleeps a second and carries on whatever happened, and its ``stop()``
sleeps another. ``Serving.start()`` returns once the port is bound, or raises
``ServerStartError`` saying why it could not be (uvicorn logs a failed bind and exits the
process: the exit becomes the error); ``Serving.stop()`` returns once uvicorn has shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

import uvicorn

from ..auth import is_loopback

logger = logging.getLogger(__package__)  # "lightning_attempts.server", as before it became a package


class ServerStartError(RuntimeError):
    """The server could not start, e.g. because its port is in use."""


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, telling ours when shutdown begins: before it waits for open requests to end."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)


class Serving:
    """One server's uvicorn, run in the background from ``start()`` until ``stop()``."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        self.uvicorn: uvicorn.Server = _Uvicorn(config, on_shutdown)
        """What upstream calls ``_uvicorn_server``; ``on_shutdown()`` runs as its shutdown begins."""
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float, *, endpoint: str, address: str) -> bool:
        """Serve in the background; True once the port is bound, False if not within ``timeout`` seconds.

        Raises what stopped uvicorn before it bound: ``ServerStartError`` naming
        ``address`` (``host:port``) for a bind error, one naming ``endpoint`` otherwise.
        """
        self._task = asyncio.create_task(self._serve(address))
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise ServerStartError(f"Server at {endpoint} stopped before it started.")
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def _serve(self, address: str) -> None:
        try:
            await self.uvicorn.serve()
        except SystemExit as exc:  # uvicorn logs why it cannot bind, then exits the process
            cause = exc.__context__
            if isinstance(cause, OSError) and cause.errno is not None and cause.errno > 0:
                reason = f"{os.strerror(cause.errno)} (errno {cause.errno})"
            elif isinstance(cause, OSError):  # e.g. a host name that does not resolve
                reason = str(cause.strerror or cause)
            else:
                reason = "uvicorn exited; its log above says why"
            raise ServerStartError(f"Could not serve on {address}: {reason}") from exc

    def bound_port(self) -> int | None:
        """The port uvicorn bound (the free one it found for port 0); None before it bound one."""
        for server in self.uvicorn.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None

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
    if api_key is None and not is_loopback(host):
        logger.warning(
            "No API key set: authentication disabled on %s:%s, reachable beyond this machine; anyone who can "
            "reach it can read resources, claim tasks and post rollouts. Set one with "
            "AttemptAwareServer(api_key=...), `lightning-attempts serve --api-key`, or AGL_KEY (read by "
            "`serve` and by servers agentlightning builds under install()).",
            host,
            port,
        )
