"""Backends that fail as real ones do, for the proxy's fault tests: hung, blackholed, failing fast.

- ``HungBackend``: a listening socket that accepts connections and reads, and never answers.
- ``BlackholedBackend``: a listening socket whose accept queue is full (backlog 0, filled by a
  connection nobody accepts): Linux drops the SYNs of further connections, as a host behind a
  firewall that drops packets does, so a connect hangs until its timeout. No root, no iptables.
- failing fast: a ``StandInVllm`` with ``fail_with = 503``.
"""

from __future__ import annotations

import asyncio
import socket


class HungBackend:
    """Accepts and never answers; ``address`` is ``host:port``."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.address = ""
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()


class BlackholedBackend:
    """A port whose SYNs are dropped: connects to it hang."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self._fillers: list[socket.socket] = []
        for _ in range(2):  # the first fills the queue; the second's SYN is dropped already
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            self._fillers.append(filler)

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._listener.close()
