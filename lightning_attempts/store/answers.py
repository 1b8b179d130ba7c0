"""What the store answers: to a submission, a heartbeat and a release, each with its HTTP body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .table import DropReason

Status = Literal["ok", "duplicate", "retrying", "dropped", "refused"]

_HTTP_STATUS: dict[Status, int] = {"ok": 200, "duplicate": 200, "retrying": 200, "dropped": 409, "refused": 400}


@dataclass(frozen=True, slots=True)
class Submission:
    """The outcome of one ``POST /rollout`` (or ``store_rollout`` call)."""

    status: Status
    rollout_id: str
    attempt_id: str | None
    """The attempt id the submission carried (``None`` from an old client)."""
    claim_sequence_id: int | None = None
    """Claim sequence id of the submitted attempt, when it was issued for this task."""
    current_attempt_id: str | None = None
    """The attempt the server holds as current: live claim, or the one whose result is stored (not in the HTTP
    answer: a live attempt's id is the capability of its LLM proxy URLs)."""
    current_claim_sequence_id: int | None = None
    reason: DropReason | None = None
    verified: bool = True
    """False when an old client's result was accepted without an attempt id."""

    @property
    def stored(self) -> bool:
        """Whether this submission's result was stored (``retrying``: requeued instead)."""
        return self.status == "ok"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.status]

    def message(self) -> str:
        if self.status == "ok":
            return f"Rollout {self.rollout_id} received and stored."
        if self.status == "duplicate":
            return f"Rollout {self.rollout_id} of attempt {self.attempt_id} was already stored."
        if self.status == "retrying":
            return f"Rollout {self.rollout_id} of attempt {self.attempt_id} failed; the task was requeued."
        if self.status == "refused":
            return "attempt_id is required by this server: upgrade the client to lightning_attempts.AttemptAwareClient."
        return f"Rollout {self.rollout_id} of attempt {self.attempt_id} dropped: {self.reason_text}."

    @property
    def reason_text(self) -> str:
        return self.reason.value if self.reason is not None else "attempt_required"

    def to_json(self) -> dict[str, Any]:
        """The body of the HTTP answer."""
        body: dict[str, Any] = {"status": self.status, "message": self.message(), "rollout_id": self.rollout_id}
        body["attempt_id"] = self.attempt_id
        if self.status in ("dropped", "refused"):
            body["reason"] = self.reason_text
        body["claim_sequence_id"] = self.claim_sequence_id
        # Not current_attempt_id: the live attempt's id lets its holder call the LLM proxy without a key.
        body["current_claim_sequence_id"] = self.current_claim_sequence_id
        if self.status == "ok":
            body["verified"] = self.verified
        return body


@dataclass(frozen=True, slots=True)
class Lease:
    """The answer to a heartbeat: whether the attempt still holds its claim, and for how long."""

    rollout_id: str
    attempt_id: str
    reason: DropReason | None = None
    """Why the attempt is no longer current (what a result of it would meet); ``None`` while it is."""
    claim_sequence_id: int | None = None
    lease_seconds: float | None = None
    """Silence after which the claim is requeued (``unresponsive_seconds``); None: no such limit."""
    expires_in: float | None = None
    """Seconds left before the claim reaches ``task_timeout_seconds``."""
    outcome: str | None = None
    """How a stale attempt ended, as ``GET /attempts/{rollout_id}`` shows it (e.g. ``unresponsive``)."""

    @property
    def current(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ok" if self.current else "stale", "rollout_id": self.rollout_id}
        body["attempt_id"] = self.attempt_id
        if self.current:
            body.update(
                claim_sequence_id=self.claim_sequence_id, lease_seconds=self.lease_seconds, expires_in=self.expires_in
            )
        else:
            body["reason"] = self.reason.value if self.reason is not None else None
            body["outcome"] = self.outcome
        return body


@dataclass(frozen=True, slots=True)
class ReleaseAnswer:
    """The answer to ``POST /release``: whether the claim was given back, and what became of the task."""

    rollout_id: str
    attempt_id: str
    reason: DropReason | None = None
    """Why the attempt could not release (it no longer holds the claim); ``None``: released."""
    claim_sequence_id: int | None = None
    gave_up: bool = False
    """The release was the task's ``max_claims``-th claim: the task was completed empty, not requeued."""
    outcome: str | None = None
    """How a stale attempt ended, as ``GET /attempts/{rollout_id}`` shows it (e.g. ``timed_out``)."""

    @property
    def released(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "released" if self.released else "stale", "rollout_id": self.rollout_id}
        body["attempt_id"] = self.attempt_id
        if self.released:
            body.update(claim_sequence_id=self.claim_sequence_id, requeued=not self.gave_up)
        else:
            body["reason"] = self.reason.value if self.reason is not None else None
            body["outcome"] = self.outcome
        return body
