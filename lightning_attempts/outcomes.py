"""What can become of a submitted result, and the HTTP answer for each outcome."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

StalePolicy = Literal["reject", "salvage"]
STALE_POLICIES: tuple[StalePolicy, ...] = ("reject", "salvage")


class DropReason(str, Enum):
    """Why a submitted result was not stored (the ``reason`` of a 409 answer)."""

    SUPERSEDED = "superseded"
    """A later claim of the task exists, or the task was requeued after this attempt."""
    ALREADY_COMPLETED = "already_completed"
    """Another attempt's result is already stored for the task."""
    CANCELLED = "cancelled"
    """The task was cancelled (``cancel_pending``) before a result arrived."""
    UNKNOWN_ROLLOUT = "unknown_rollout"
    """No such task: never queued here, or finished so long ago that it was forgotten."""
    UNKNOWN_ATTEMPT = "unknown_attempt"
    """The task exists but never handed out this attempt id."""
    FAILED = "failed"
    """This attempt already posted a failed result, and the task was requeued for another attempt."""
    RELEASED = "released"
    """This attempt gave its claim back (``POST /release``), and the task was requeued."""


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
    """The attempt the server holds as current: live claim, or the one whose result is stored."""
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
        body["current_attempt_id"] = self.current_attempt_id
        body["current_claim_sequence_id"] = self.current_claim_sequence_id
        if self.status == "ok":
            body["verified"] = self.verified
        return body
