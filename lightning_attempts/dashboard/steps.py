"""The ``attempts/*`` figures of the last steps, as verl's daemon logged them, for the dashboard's chart."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

KEPT_STEPS = 50
"""How many steps are kept (the oldest forgotten first)."""


class StepLog:
    """The last ``KEPT_STEPS`` steps' metrics; written once per step (verl's daemon), read by the dashboard."""

    def __init__(self, kept: int = KEPT_STEPS) -> None:
        self._steps: deque[dict[str, Any]] = deque(maxlen=kept)
        self._count = 0

    def add(self, metrics: Mapping[str, float]) -> None:
        """A step ended with these metrics (``attempts/*`` or ``val/attempts/*``)."""
        self._count += 1
        self._steps.append({"step": self._count, "time": time.time(), "metrics": dict(metrics)})

    def recent(self) -> list[dict[str, Any]]:
        """The kept steps, oldest first: ``{step, time, metrics}``."""
        return list(self._steps)
