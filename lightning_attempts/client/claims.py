"""A claim a client holds: the attempt its result must be submitted with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Claim:
    """A task this client claimed: the attempt its result must be submitted with."""

    rollout_id: str
    attempt_id: str
    claim_sequence_id: int | None = None
    lease_seconds: float | None = None
