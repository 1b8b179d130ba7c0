"""verl integration: ``AttemptAwareDaemon``, verl's ``AgentModeDaemon`` around the attempt-aware server.

Importing this package imports nothing of verl; ``AttemptAwareDaemon`` (``lightning_attempts.verl.daemon``)
imports verl and torch, as upstream's daemon does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .daemon import AttemptAwareDaemon

__all__ = ["AttemptAwareDaemon"]


def __getattr__(name: str) -> Any:
    if name == "AttemptAwareDaemon":
        from .daemon import AttemptAwareDaemon

        return AttemptAwareDaemon
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
