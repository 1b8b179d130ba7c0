"""The producer API's wire models: what a trainer in another process sends ``serve`` and what it gets back.

The bodies refuse fields they do not know (``extra="forbid"``): a misspelt ``rollout_ids`` must
not turn a take or a cancel of a few tasks into one of every task. Where ``rollout_ids`` may
mean "every one" it has no default: the caller writes ``null`` to say so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .compat import ResourcesUpdate
from .models import MAX_ID_LENGTH, AttemptRollout, ReleaseReason
from .store.records import AttemptOutcome

if TYPE_CHECKING:
    from agentlightning.types import NamedResources
else:  # the same type on every release: what ResourcesUpdate holds (0.1.x has no ProxyLLM)
    NamedResources = ResourcesUpdate.model_fields["resources"].annotation

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
RequestId = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="Any string unique to this request (e.g. a UUID4). The server keeps the answers of its "
        "last requests (the last 32, 64 MiB in all): one repeated with the same id (a retry after a lost answer) "
        "gets the first answer and changes nothing; 409 once that answer is no longer kept.",
    ),
]
MAX_TASKS = 10_000
"""Tasks one ``POST /tasks`` may queue: the request is answered on the server's event loop (10,000 small tasks
take about 70 ms there, 300,000 took 5 to 9 s), so a larger batch is sent as several requests."""
RolloutStatus = Literal["stored", "pending", "finished"]
"""``stored``: a result waits to be taken; ``pending``: queued or claimed; ``finished``: cancelled, or its result
was taken."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskToQueue(_Body):
    """One task, as ``AttemptAwareServer.queue_task`` takes it."""

    sample: Any = Field(description="The task's input, any JSON value; the worker's agent receives it.")
    mode: Literal["train", "val", "test"] | None = None
    resources_id: Id | None = Field(
        default=None, description="A published resources id (`POST /resources`); null: the latest at claim time."
    )
    metadata: dict[str, Any] | None = None


class QueueTasks(_Body):
    """``POST /tasks``: the tasks to queue, in order."""

    tasks: list[TaskToQueue] = Field(
        min_length=1,
        max_length=MAX_TASKS,
        description=f"At most {MAX_TASKS:,} tasks (a longer list is refused, 422, before any is queued).",
    )
    request_id: RequestId = None


class Queued(BaseModel):
    """``POST /tasks``' answer: the rollout id of each task, in the order given."""

    rollout_ids: list[str]


class PublishResources(_Body):
    """``POST /resources``: a new version of the resources, which becomes the latest."""

    resources: Annotated[NamedResources, Field(min_length=1)]
    request_id: RequestId = None


class Published(BaseModel):
    """``POST /resources``' answer: the id of the new version (``GET /resources/{id}`` serves it)."""

    resources_id: str


class TakeRollouts(_Body):
    """``POST /rollouts/take``: take stored results off the server."""

    rollout_ids: list[Id] | None = Field(
        description="The results to take (those not stored are skipped); null: every stored result."
    )
    request_id: RequestId = None


class Rollouts(BaseModel):
    """Results, as the workers' runners posted them (with their ``attempt_id``)."""

    rollouts: list[AttemptRollout]


class WaitForRollouts(_Body):
    """``POST /rollouts/wait``: hold the request until each of these tasks is finished, or ``timeout`` passes."""

    rollout_ids: list[Id]
    timeout: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Seconds to hold the request at most, capped by the server's `max_poll_wait`; null: the cap.",
    )


class Waited(Rollouts):
    """``POST /rollouts/wait``'s answer: the stored results among the ids (left in place), and those still pending."""

    pending: list[str] = Field(description="The ids still queued or claimed.")
    held: float = Field(
        description="The longest the server would hold this request (the timeout, capped by `max_poll_wait`); "
        "0 when it answered at once (e.g. as it stops)."
    )


class CancelTasks(_Body):
    """``POST /tasks/cancel``: cancel queued and claimed tasks; their later results are dropped."""

    rollout_ids: list[Id] | None = Field(
        description="The tasks to cancel (finished and unknown ones are skipped); null: every pending task."
    )
    request_id: RequestId = None


class Cancelled(BaseModel):
    """``POST /tasks/cancel``'s answer: the ids cancelled."""

    cancelled: list[str]


class RolloutState(BaseModel):
    """``GET /rollouts/{rollout_id}``'s answer: where a task is, and its result if one is stored (not taken)."""

    rollout_id: str
    status: RolloutStatus
    rollout: AttemptRollout | None = None


class AttemptRecord(BaseModel):
    """One claim of a task, as ``GET /attempts/{rollout_id}`` serves it (``RemoteServer.attempt_history``)."""

    claim_sequence_id: int = Field(description="1 for the task's first claim, 2 for the next, ...")
    attempt_id: str
    claimed_at: float = Field(description="Wall-clock time of the claim, in seconds since the epoch.")
    last_heartbeat_at: float | None = None
    ended_at: float | None = None
    outcome: AttemptOutcome = Field(description="How it ended; in_flight while it holds its claim.")
    failure: str | None = Field(default=None, description="Why it failed, as its worker said (truncated).")
    leased: bool = Field(default=False, description="Whether its worker heartbeats: silence then ends the claim.")
    note: str | None = Field(default=None, description="How it ended, where its outcome alone would not say.")
    release_reason: ReleaseReason | None = Field(default=None, description="Why its worker gave it back.")
    kept_past_timeout: bool = Field(default=False, description="Whether its claim outlived the task timeout.")
    worker: str | None = Field(
        default=None,
        description="Who claimed it: '<name> at <address>' when its worker names itself, else the address.",
    )
