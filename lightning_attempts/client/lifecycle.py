"""A process's clients at its edges: releases at exit and when a multiprocessing worker ends, resets after a fork.

Every ``AttemptAwareClient`` registers here (weakly). At interpreter exit every claim still
open in this process is given back (``POST /release``), so that its task is requeued at
once rather than after its timeout; a multiprocessing worker ends with ``os._exit``,
running no atexit handler, so it does the same through multiprocessing's finalizers.
After a fork, each client rebuilds what must not cross it (locks, pooled connections,
heartbeat workers, its claim book): a child holds, and at its end releases, only its own
claims. Releases are best effort and never fail the exit.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import weakref
from typing import Protocol

logger = logging.getLogger(__package__)


class Tracked(Protocol):
    """What these hooks need of a client (``AttemptAwareClient``)."""

    def release_open_claims(self) -> int: ...
    def _after_fork(self) -> None: ...


_clients: weakref.WeakSet[Tracked] = weakref.WeakSet()


def track(client: Tracked) -> None:
    """Release ``client``'s open claims when this process ends; reset it after a fork."""
    _clients.add(client)


def _reset_after_fork() -> None:
    for client in list(_clients):
        client._after_fork()  # pyright: ignore[reportPrivateUsage]


def _release_at_exit() -> None:
    """Give back every claim still open in this process (after a fork, a child holds only its own)."""
    for client in list(_clients):
        try:
            client.release_open_claims()
        except Exception as error:  # never fail the interpreter's exit
            logger.debug("Releasing open claims at exit failed: %s", error)


def _release_when_the_worker_ends(_: object) -> None:
    """In a multiprocessing child (which ends with ``os._exit``, running no atexit handler), release at its end."""
    multiprocessing.util.Finalize(None, _release_at_exit, exitpriority=0)


os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(_release_at_exit)
multiprocessing.util.register_after_fork(_release_at_exit, _release_when_the_worker_ends)
