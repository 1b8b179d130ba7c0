"""The package's exceptions: one base, ``LightningAttemptsError``, and the few a user catches.

Each is also a subclass of the built-in exception raised in its place before it existed, so
that an ``except RuntimeError`` or ``except ValueError`` written against earlier releases
still catches it.
"""

from __future__ import annotations


class LightningAttemptsError(Exception):
    """Base of every exception this package raises on purpose."""


class OptionError(LightningAttemptsError, ValueError):
    """An option (an argument, a ``LIGHTNING_ATTEMPTS_<OPTION>`` variable, a flag) out of its range; names it."""


class ServerNotRunning(LightningAttemptsError, RuntimeError):
    """The server is not running (never started, or stopped), so it has no store to answer from."""

    def __init__(self, message: str = "Store not initialized. The server may not be running.") -> None:
        super().__init__(message)  # upstream's words, which callers may match


class ServerStopped(ServerNotRunning):
    """The server stopped while a caller waited on it (``wait_for_rollouts``, ``poll_completed_rollout``)."""

    def __init__(self, message: str = "The server stopped while waiting for rollouts.") -> None:
        super().__init__(message)


class ServerStartError(LightningAttemptsError, RuntimeError):
    """The server could not start, e.g. because its port is in use."""


class Unauthorized(LightningAttemptsError, PermissionError):
    """The server refused a request for lack of its API key (401): ``AGL_KEY``, or ``api_key=...``."""


class RequestRefused(LightningAttemptsError, ValueError):
    """The server refused a request (a 4xx but 401): malformed, or naming what it does not hold.

    ``status`` is the HTTP status, ``detail`` the server's answer (what was wrong).
    """

    def __init__(self, status: int, detail: object) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
