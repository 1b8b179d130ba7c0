"""Background heartbeats for a client's open claims, from one thread per client and process.

A claim is heartbeaten only when the server announced a lease (``lease_seconds`` in
``/task``), every ``heartbeat_fraction`` of it, until it is submitted or the server
answers that the attempt lost its claim. Each beat is the client's ``beat``, the
heartbeat step of ``protocol.py``.

Claims made in an event loop are heartbeaten from the thread too, not from the loop: a
beat says that the process is alive, and an agent that blocks its loop (a synchronous
call in an async rollout) is alive. Only a process that stops running (killed, frozen,
cut off from the server) stops beating and loses its lease.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from .claims import Claim


class ClaimHolder(Protocol):
    """What heartbeats need of a client (``AttemptAwareClient``)."""

    heartbeat_fraction: float | None

    def is_current(self, attempt_id: str) -> bool: ...
    def beat(self, claim: Claim) -> bool: ...


def _interval(client: ClaimHolder, claim: Claim) -> float:
    return (claim.lease_seconds or 0.0) * (client.heartbeat_fraction or 1.0)


class ThreadHeartbeats:
    """One daemon thread heartbeating every open claim of a client in this process."""

    def __init__(self, client: ClaimHolder) -> None:
        self._client = client
        self._due: dict[str, tuple[float, Claim]] = {}  # attempt id -> (next beat, claim)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="lightning-attempts-heartbeats", daemon=True)
        self._thread.start()

    def watch(self, claim: Claim) -> None:
        with self._lock:
            self._due[claim.attempt_id] = (time.monotonic() + _interval(self._client, claim), claim)
        self._wake.set()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            now = time.monotonic()
            with self._lock:
                for attempt_id in [a for a in self._due if not self._client.is_current(a)]:
                    del self._due[attempt_id]
                due = [claim for at, claim in self._due.values() if at <= now]
                for claim in due:
                    self._due[claim.attempt_id] = (now + _interval(self._client, claim), claim)
                wait = min((at for at, _ in self._due.values()), default=now + 60.0) - now
            for claim in due:
                if self._client.is_current(claim.attempt_id):
                    self._client.beat(claim)
            self._wake.wait(max(wait, 0.0))
            self._wake.clear()


class Heartbeats:
    """One client's heartbeat thread in this process, started when it first has a claim to beat.

    The thread holds the client (which passes itself when it first needs one), as it
    heartbeats through it; the client holds this, which does not hold the client.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.thread: ThreadHeartbeats | None = None

    def watch(self, client: ClaimHolder, claim: Claim) -> None:
        """Heartbeat ``claim``, made from sync code or an event loop, from the thread (started on first use)."""
        with self._lock:
            if self.thread is None or self.thread.stopped:  # a client used again after close()
                self.thread = ThreadHeartbeats(client)
            thread = self.thread
        thread.watch(claim)

    def stop(self) -> None:
        """Stop the thread."""
        if self.thread is not None:
            self.thread.stop()
