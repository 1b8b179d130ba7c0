"""The socket ``Serving.bind`` makes: its connections send each answer at once (``TCP_NODELAY``).

uvicorn writes an answer's headers and its body in two writes; with Nagle's algorithm on, the
body waits for the client's delayed ACK of the headers (about 40 ms on Linux) on every answer of
a kept-alive connection. asyncio turns Nagle off only on sockets created as ``IPPROTO_TCP``.
"""

from __future__ import annotations

import socket

import httpx

from lightning_attempts import AttemptAwareServer
from lightning_attempts.testing import ServerThread


def server_side_nodelay(served: ServerThread[AttemptAwareServer]) -> list[int]:
    """``TCP_NODELAY`` of each connection the server has open (read on its loop)."""

    def read() -> list[int]:
        connections = served.server._serving.uvicorn.server_state.connections  # pyright: ignore[reportPrivateUsage]
        sockets = [connection.transport.get_extra_info("socket") for connection in connections]  # pyright: ignore
        return [sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for sock in sockets]

    return served.run(read)


def test_connections_of_a_started_server_have_nagle_off(served: ServerThread[AttemptAwareServer]) -> None:
    with httpx.Client() as client:  # one kept-alive connection
        assert client.get(f"{served.endpoint}/attempts/stats").status_code == 200
        flags = server_side_nodelay(served)
    assert len(flags) == 1 and flags[0] != 0, flags  # without the fix: [0]
