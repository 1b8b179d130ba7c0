"""The attempt-aware client: ``AttemptAwareClient`` and the claims it holds.

Every module of this package logs on the ``lightning_attempts.client`` logger.
"""

from __future__ import annotations

from .claims import MAX_OPEN_CLAIMS, Claim
from .client import DEFAULT_POLL_WAIT, AttemptAwareClient
from .protocol import RELEASE_TIMEOUT

__all__ = ["DEFAULT_POLL_WAIT", "MAX_OPEN_CLAIMS", "RELEASE_TIMEOUT", "AttemptAwareClient", "Claim"]
