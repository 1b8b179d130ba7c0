"""One call's tries: the backend it goes to, and the next one when a try fails before its answer began.

Each try ends with a verdict on its backend for ``BackendHealth``: failed (and why), answered,
or none (the client left). A call goes to each backend at most once, ``max_tries`` at most
(every backend, by default): its time is bounded by that many first bytes.
"""

from __future__ import annotations

from .forwarding import Call
from .routing import BackendRouter
from .targets import Attempt


class Resends:
    """The tries of one call of ``attempt`` (None: a plain call), on ``router``'s backends."""

    def __init__(self, router: BackendRouter, attempt: Attempt | None, max_tries: int | None = None) -> None:
        self._router = router
        self._attempt = attempt
        self._max_tries = max_tries
        self._tried: list[str] = []

    def first(self) -> str | None:
        """The backend of the first try, counted in flight; None when there is none."""
        return self._take(self._router.acquire(self._attempt))

    def may_resend(self) -> bool:
        limit = self._router.count() if self._max_tries is None else min(self._max_tries, self._router.count())
        return len(self._tried) < limit

    def next(self, call: Call) -> str | None:
        """Release the try's backend with the verdict on it; the next backend if the call is to be re-sent."""
        backend = call.backend
        self._router.release(backend)
        health = self._router.health
        if call.failure is not None:
            health.failed(backend, call.failure)
            if self._attempt is not None:
                self._router.forget(self._attempt)  # its next call is routed afresh
        elif call.client_gone or not call.status:
            health.ended(backend)
        else:
            health.succeeded(backend)
        if not call.resend:
            return None
        self._router.resent += 1
        return self._take(self._router.acquire(self._attempt, exclude=self._tried))

    def _take(self, backend: str | None) -> str | None:
        if backend is not None:
            self._tried.append(backend)
        return backend
