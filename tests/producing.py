"""Helpers of the producer API's tests: a server with its options, and a way to see a held wait begin."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable
from contextlib import contextmanager
from typing import Any

from lightning_attempts import AttemptAwareServer
from lightning_attempts.testing import ManualClock, ServerThread, serve_in_thread

Served = ServerThread[AttemptAwareServer]
LONG = 30.0
"""A wait no test sits through: one that ends before it passes ended on an event."""


@contextmanager
def serving(**options: Any) -> Generator[Served]:
    """An AttemptAwareServer (60 s task timeout, manual clock, the producer routes) with ``options``, serving on a
    free loopback port."""
    server = AttemptAwareServer(port=0, task_timeout_seconds=60, clock=ManualClock(), producer_api=True, **options)
    with serve_in_thread(server) as served:
        yield served


def entered_waits(served: Served) -> threading.Semaphore:
    """Released each time a wait begins on the server: a result stored from then on ends it."""
    server, entered = served.server, threading.Semaphore(0)
    wait = server.wait_for_rollouts

    async def recorded(rollout_ids: Iterable[str], timeout: float | None = None) -> Any:
        entered.release()
        return await wait(rollout_ids, timeout)

    server.wait_for_rollouts = recorded  # type: ignore[method-assign]
    return entered
