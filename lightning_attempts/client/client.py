"""AttemptAwareClient: upstream's legacy client, carrying each claim's attempt id to its submission.

The client overrides upstream's I/O (``_request_json``, ``_post_json`` and their async
twins) and its public methods, and runs each through a protocol step of ``protocol.py``
with its sync driver (``_run``) or its async one (``_arun``): the drivers do the I/O the
step asks for (a request through ``transport.py``, a call of upstream's own method, a
claim handed to the heartbeat thread) and nothing else, so the sync and async paths
differ only there. What it holds per process (the claim book, the pooled connections, the
heartbeat thread, the steps and what they learnt of the server) is rebuilt after a fork.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

from ..compat import AgentLightningClient, LegacyRollout, ResourcesUpdate
from ..errors import OptionError
from ..keys import key_from_env, validate_key
from ..models import AttemptTask, ReleaseReason
from .claims import Claim, ClaimBook
from .heartbeats import Heartbeats
from .lifecycle import track
from .protocol import Pause, Send, Step, Steps, Upstream, poll_pause
from .transport import Transport

DEFAULT_POLL_WAIT = 20.0
"""Seconds each ``GET /task`` asks the server to hold it (a patched server caps it, 20 s by default)."""

T = TypeVar("T")


class AttemptAwareClient(AgentLightningClient):
    """Drop-in ``AgentLightningClient`` that submits each result with its claim's attempt id.

    Same constructor as upstream (``endpoint``, ``poll_interval``, ``timeout``), plus
    keyword-only ``submit_attempts`` (tries per submission, default 5),
    ``heartbeat_fraction`` (heartbeat every this fraction of the lease the server
    announces, default 1/3, from a background thread; ``None`` turns heartbeats off, and
    its claims are then not leased), ``poll_wait`` (seconds each
    ``GET /task`` asks the server to hold it, default 20; ``None`` or 0: plain polls) and
    ``api_key`` (sent on every request as ``Authorization: Bearer <key>``; ``None``, the
    default, reads ``AGL_KEY`` as agentlightning 1.0 does; ``""`` sends none).
    """

    def __init__(
        self,
        endpoint: str,
        poll_interval: float = 5.0,
        timeout: float = 10.0,
        *,
        submit_attempts: int = 5,
        heartbeat_fraction: float | None = 1 / 3,
        poll_wait: float | None = DEFAULT_POLL_WAIT,
        api_key: str | None = None,
    ) -> None:
        super().__init__(endpoint=endpoint, poll_interval=poll_interval, timeout=timeout)
        if submit_attempts < 1:
            raise OptionError("submit_attempts must be at least 1")
        if poll_wait is not None and poll_wait < 0:
            raise OptionError("poll_wait must not be negative")
        if heartbeat_fraction is not None and not 0 < heartbeat_fraction <= 1:
            # above 1 a live worker would lose every lease; at 0 or below it would flood the server
            raise OptionError("heartbeat_fraction must be in (0, 1] (or None for no heartbeats)")
        key = key_from_env() if api_key is None else validate_key(api_key)
        if key is not None:  # every request goes through the pooled clients built with these headers
            self._default_headers = {**self._default_headers, "Authorization": f"Bearer {key}"}
        self.submit_attempts = submit_attempts
        self.heartbeat_fraction = heartbeat_fraction
        self.poll_wait = poll_wait or None
        self._reset_process_state()
        track(self)

    _PROCESS_STATE = ("_book", "_transport", "_heartbeats", "_steps")
    """Attributes that must not cross a fork or a pickle: claims, locks, pooled connections, the heartbeat thread."""

    def _reset_process_state(self) -> None:
        """Build the ``_PROCESS_STATE`` of this process afresh."""
        self._book = ClaimBook(self)
        self._transport = Transport(self, self._default_headers)
        self._heartbeats = Heartbeats()
        keyed = "Authorization" in self._default_headers
        self._steps = Steps(self, self._book, task_uri=self._next_task_uri, keyed=keyed)

    def _after_fork(self) -> None:
        self._reset_process_state()

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle carries (the trainer pickles itself and its client into spawned workers): the
        configuration, not this process's claims, locks, connections or heartbeat thread."""
        return {name: value for name, value in self.__dict__.items() if name not in self._PROCESS_STATE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()
        track(self)

    @property
    def poll_interval(self) -> float:  # pyright: ignore[reportIncompatibleVariableOverride]
        """Seconds upstream's poll loop sleeps after an empty ``/task`` answer.

        What it was set to; but right after an empty answer that the server held
        (``GET /task?wait=S``), in the thread or task that polled, only what is left of
        it, or of the wait if shorter, once the poll's own duration is counted: 0 after a
        poll held until its wait ended, so the poll loop polls again at once.
        """
        pause = poll_pause(self)
        return self._poll_interval if pause is None else pause

    @poll_interval.setter
    def poll_interval(self, seconds: float) -> None:
        self._poll_interval = seconds

    # -- the drivers: the only I/O --------------------------------------------

    def _run(self, step: Step[T]) -> T:
        """Run ``step`` in this thread: do what it yields, send back the result or throw in the failure."""
        try:
            effect = next(step)
            while True:
                try:
                    if isinstance(effect, Send):
                        result = self._transport.send(effect)
                    elif isinstance(effect, Upstream):
                        method = getattr(super(), effect.method)
                        result = method() if effect.arg is None else method(effect.arg)
                    elif isinstance(effect, Pause):
                        result = time.sleep(effect.seconds)
                    else:
                        result = self._heartbeats.watch(self, effect.claim)
                except BaseException as error:  # the step's to handle, or to let through
                    failure = error
                else:
                    effect = step.send(result)
                    continue
                try:  # out of the handler: the step sees its caller's exception, not this one
                    effect = step.throw(failure)
                finally:
                    del failure  # no cycle through its traceback
        except StopIteration as done:
            return done.value

    async def _arun(self, step: Step[T]) -> T:
        """Run ``step`` in the running event loop: as ``_run``, awaiting the I/O."""
        try:
            effect = next(step)
            while True:
                try:
                    if isinstance(effect, Send):
                        result = await self._transport.asend(effect)
                    elif isinstance(effect, Upstream):
                        method = getattr(super(), effect.async_method)
                        result = await (method() if effect.arg is None else method(effect.arg))
                    elif isinstance(effect, Pause):
                        result = await asyncio.sleep(effect.seconds)
                    else:
                        result = self._heartbeats.watch(self, effect.claim)  # a blocked loop is no dead worker
                except BaseException as error:
                    failure = error
                else:
                    effect = step.send(result)
                    continue
                try:
                    effect = step.throw(failure)
                finally:
                    del failure
        except StopIteration as done:
            return done.value

    # -- upstream's I/O, overridden -------------------------------------------

    def _request_json(self, url: str) -> dict[str, Any] | None:
        return self._run(self._steps.get_json(url, self._poll_interval))

    async def _request_json_async(self, url: str) -> dict[str, Any] | None:
        return await self._arun(self._steps.get_json(url, self._poll_interval))

    def _post_json(self, url: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        return self._run(self._steps.post_json(url, payload))

    async def _post_json_async(self, url: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        return await self._arun(self._steps.post_json(url, payload))

    # -- claims ---------------------------------------------------------------

    def poll_next_task(self) -> AttemptTask | None:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Poll until a task is available (as upstream does) and remember it as a claim.

        First, release this thread's or task's previous claim if it was never submitted
        (the runner skipped it).
        """
        return self._run(self._steps.poll())

    async def poll_next_task_async(self) -> AttemptTask | None:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Poll until a task is available (as upstream does) and remember it as a claim.

        First, release this thread's or task's previous claim if it was never submitted
        (the runner skipped it).
        """
        return await self._arun(self._steps.poll())

    # -- resources ------------------------------------------------------------

    def get_resources_by_id(self, resource_id: str) -> ResourcesUpdate | None:
        """Upstream's (cached by id), its LLM endpoints on the daemon's attempt-aware proxy scoped to this thread's
        claim: ``.../rollout/{rollout_id}/attempt/{attempt_id}/v1``."""
        return self._run(self._steps.resources(resource_id))

    async def get_resources_by_id_async(self, resource_id: str) -> ResourcesUpdate | None:
        """Upstream's (cached by id), its LLM endpoints on the daemon's attempt-aware proxy scoped to this task's
        claim."""
        return await self._arun(self._steps.resources(resource_id))

    def get_latest_resources(self) -> ResourcesUpdate | None:
        """Upstream's, its LLM endpoints on the daemon's attempt-aware proxy scoped to this thread's claim."""
        return self._run(self._steps.resources(None))

    async def get_latest_resources_async(self) -> ResourcesUpdate | None:
        """Upstream's, its LLM endpoints on the daemon's attempt-aware proxy scoped to this task's claim."""
        return await self._arun(self._steps.resources(None))

    def attempt_id_for(self, rollout: Any) -> str | None:
        """The attempt id a submission of ``rollout`` carries (``claims.py`` says the order of choice)."""
        return self._book.attempt_id_for(rollout)

    def open_claims(self) -> list[Claim]:
        """Claims made by this client and not submitted yet."""
        return self._book.open_claims()

    def is_current(self, attempt_id: str) -> bool:
        """Whether this client holds the claim: not submitted, and no heartbeat was told it is lost."""
        return self._book.is_current(attempt_id)

    # -- submissions ----------------------------------------------------------

    def post_rollout(self, rollout: LegacyRollout) -> dict[str, Any] | None:
        """Submit ``rollout`` with its attempt id; return the server's answer (None on failure).

        Called while an interrupt unwinds the caller (the runner posts its empty default
        result in a ``finally``), it releases the claim instead and returns None.
        """
        return self._run(self._steps.submit(rollout))

    async def post_rollout_async(self, rollout: LegacyRollout) -> dict[str, Any] | None:
        """Submit ``rollout`` with its attempt id; return the server's answer (None on failure).

        Called while an interrupt or a cancellation unwinds the caller, it releases the
        claim instead and returns None.
        """
        return await self._arun(self._steps.submit(rollout))

    # -- releases -------------------------------------------------------------

    def release(self, claim: Claim, reason: ReleaseReason | None = None) -> bool:
        """Give ``claim`` back to the server so that its task is requeued now; True if it was.

        ``reason``: ``"skipped"`` or ``"no_resources"`` when the task was never run (the claim then
        does not count toward the server's ``max_claims``); ``"interrupted"``; None counts as run.
        The claim is forgotten (and no longer heartbeaten) whatever the answer. Best
        effort: failures are logged at DEBUG, never raised.
        """
        return self._run(self._steps.release(claim, reason))

    async def release_async(self, claim: Claim, reason: ReleaseReason | None = None) -> bool:
        """Give ``claim`` back to the server so that its task is requeued now; True if it was (see ``release``)."""
        return await self._arun(self._steps.release(claim, reason))

    def release_open_claims(self) -> int:
        """Release every claim this client holds and has not submitted; return how many were released."""
        return self._run(self._steps.release_open())

    async def release_open_claims_async(self) -> int:
        """Release every claim this client holds and has not submitted; return how many were released."""
        return await self._arun(self._steps.release_open())

    # -- heartbeats -----------------------------------------------------------

    def beat(self, claim: Claim) -> bool:
        """Send one heartbeat for ``claim``; False when the server says it lost the claim."""
        return self._run(self._steps.beat(claim))

    async def beat_async(self, claim: Claim) -> bool:
        """Send one heartbeat for ``claim``; False when the server says it lost the claim."""
        return await self._arun(self._steps.beat(claim))

    # -- closing --------------------------------------------------------------

    def close(self) -> None:
        """Release open claims, stop heartbeats and close pooled connections."""
        self.release_open_claims()
        self._heartbeats.stop()
        self._transport.close()

    async def aclose(self) -> None:
        """Release open claims and close this event loop's pooled connections."""
        await self.release_open_claims_async()
        await self._transport.aclose()
