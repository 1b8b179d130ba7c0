"""The server's options: ``ServerOptions``, one frozen dataclass holding them with their defaults and checks.

``AttemptAwareServer.__init__`` spells each option as a keyword-only parameter defaulting
to its value in ``DEFAULTS`` (``environment.py`` derives the ``LIGHTNING_ATTEMPTS_<OPTION>``
variables from that signature), and gathers them in a ``ServerOptions``, checked once;
the store, the routes and ``lightning-attempts serve``'s defaults read them from there.
Each default is defined beside the part it governs (the store, the polls, the route class).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..auth import validate_key
from ..store import DEFAULT_MAX_REMEMBERED, Clock, StalePolicy, check_options
from .polls import DEFAULT_MAX_POLL_WAIT
from .routing import DEFAULT_MAX_BODY_BYTES


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """``AttemptAwareServer``'s keyword-only options (its docstring says what each does).

    Built checked: a bad value raises ``ValueError`` naming the option (the store's options
    by the store's ``check_options``), so a server fails when it is built, not when it starts.
    ``api_key`` is kept as ``None`` when empty, and left out of the ``repr``.
    """

    stale_policy: StalePolicy = "reject"
    require_attempt_id: bool = False
    unresponsive_seconds: float | None = None
    max_claims: int | None = None
    retry_failed: int = 0
    max_remembered: int = DEFAULT_MAX_REMEMBERED
    max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES
    max_poll_wait: float = DEFAULT_MAX_POLL_WAIT
    api_key: str | None = field(default=None, repr=False)
    rewrite_loopback_endpoints: bool | None = None
    clock: Clock = time.monotonic

    def __post_init__(self) -> None:
        check_options(
            stale_policy=self.stale_policy,
            unresponsive_seconds=self.unresponsive_seconds,
            max_claims=self.max_claims,
            retry_failed=self.retry_failed,
            max_remembered=self.max_remembered,
        )
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive (or None for no limit)")
        if not (math.isfinite(self.max_poll_wait) and self.max_poll_wait >= 0):
            raise ValueError("max_poll_wait must be a finite number of seconds, 0 or more")
        object.__setattr__(self, "api_key", validate_key(self.api_key))


DEFAULTS = ServerOptions()
"""Every option at its default."""
