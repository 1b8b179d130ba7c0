"""The wire models: upstream's task and rollout, each with the attempt that produced it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from .compat import LegacyRollout, Task, TaskIfAny

MAX_ID_LENGTH = 256
"""Longest rollout or attempt id accepted; ours are 36 (attempts) and 44 (rollouts) characters."""
MAX_FAILURE_LENGTH = 4096
"""Longest ``failure`` text accepted with a result (the server logs at most its first 200 characters)."""

ReleaseReason = Literal["no_resources", "skipped", "interrupted", "closing"]
"""Why a worker gave a claim back (``POST /release``'s ``reason``): its runner could not fetch the task's
resources, polled again without running it, was interrupted while running it, or its client closed."""

WAIT_HEADER = "X-Lightning-Attempts-Wait"
"""Header of the answer to ``GET /task?wait=S``: the seconds the server held (or would hold) the poll; 0: none."""


class AttemptTask(Task):
    """A task as handed out by one claim: upstream's ``Task`` plus the attempt.

    ``num_claims`` is kept as a deprecated mirror of ``claim_sequence_id`` so that
    upstream clients, which read ``num_claims``, see what they always saw.
    """

    attempt_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    """Random UUID4 of this claim; the result must be submitted with it."""
    claim_sequence_id: int | None = None
    """1 for the first claim of the task, then one more for each re-claim."""
    lease_seconds: float | None = None
    """Set when the server has leases: a leased claim (its worker heartbeats) silent this long is requeued;
    heartbeat more often than this."""
    llm_proxy_port: int | None = None
    """Set when the server's owner (verl's daemon) serves an attempt-aware LLM proxy on this port: an LLM
    endpoint of the task's resources on it serves this attempt at ``.../rollout/{rollout_id}/attempt/{attempt_id}/v1``
    (``AttemptAwareClient`` hands its agent that one). Old clients ignore it."""

    @model_validator(mode="after")
    def _mirror_num_claims(self) -> AttemptTask:
        if self.claim_sequence_id is None:
            self.claim_sequence_id = self.num_claims
        elif self.num_claims is None:
            self.num_claims = self.claim_sequence_id
        return self


class AttemptTaskIfAny(TaskIfAny):
    """``GET /task``'s answer; declared with ``AttemptTask`` so the attempt fields survive."""

    task: AttemptTask | None = None  # pyright: ignore[reportIncompatibleVariableOverride]


class AttemptRollout(LegacyRollout):
    """Upstream's legacy rollout plus the id of the attempt that produced it."""

    rollout_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    attempt_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    """The ``attempt_id`` of the claim this result belongs to; ``None`` from old clients."""
    failure: str | None = Field(default=None, max_length=MAX_FAILURE_LENGTH)
    """Set by a worker to say its attempt failed, and why (e.g. the exception); the server logs
    it and, with ``retry_failed``, requeues the task. ``None``: the server judges by the content."""

    @classmethod
    def from_rollout(cls, rollout: Any, attempt_id: str | None) -> AttemptRollout:
        """Wrap any legacy rollout model (or a subclass) without revalidating its content."""
        fields = {name: getattr(rollout, name) for name in LegacyRollout.model_fields}
        return cls.model_construct(**fields, attempt_id=attempt_id, failure=getattr(rollout, "failure", None))


class ClaimRef(BaseModel):
    """A claim, named by its task and attempt."""

    rollout_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    attempt_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)


class Heartbeat(ClaimRef):
    """``POST /heartbeat``'s body: the claim a worker is still working on."""


class Release(ClaimRef):
    """``POST /release``'s body: the claim a worker gives back without a result, why, and who gives it back."""

    reason: ReleaseReason | None = None
    """``no_resources`` and ``skipped``: the worker never ran the task (not counted toward ``max_claims``);
    ``interrupted``: it was stopped while running it; ``closing``: its client closed with the claim open.
    None (old shims): counted like ``interrupted``."""
    worker: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    """Who gives it back, for the server's log (the shim sends ``host:pid``); the server adds the address."""
