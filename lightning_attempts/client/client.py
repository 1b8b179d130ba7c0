"""AttemptAwareClient: upstream's legacy client, carrying each claim's attempt id to its submission.

The upstream runner builds the rollout it posts from ``task.rollout_id`` alone, so the
attempt id the server handed out is lost between poll and post. This client remembers
each claim and attaches its ``attempt_id`` when the result is submitted (``claims.py``
says which claim a rollout belongs to, in order).

Claims given back (``POST /release``, so that the task is requeued at once rather than
after its timeout): a claim the runner skipped (it polls again from the same thread or
asyncio task without having submitted that context's last claim, as it does when it
cannot fetch the task's resources); the claim whose result the runner posts while an
interrupt (Ctrl+C, ``SystemExit``, a cancelled task) unwinds it, instead of posting the
runner's empty default result; every open claim on ``close()``, ``aclose()``, at
interpreter exit and when a multiprocessing worker ends (after a fork, only the child's
own). Releases are best effort with a short timeout, logged, never raised; an unpatched
server (404) is not asked again.

Transport: pooled httpx connections, one sync client per process and one async client per
event loop, rebuilt after a fork (the upstream trainer forks its workers). Submissions that
fail in transport are retried with backoff (a retry of a stored attempt answers
``duplicate``); a dropped result is logged and returned, never raised.

Polling: every ``GET /task`` asks the server to hold it (``?wait=poll_wait``, 20 s by
default; the request's timeout is ``timeout`` plus that). A patched server answers as
soon as a task is claimed for the poll, and says in a header that it held it; then
upstream's poll loop, which this client runs unchanged, polls again at once (its
``poll_interval`` reads as what is left of it: usually 0). An unpatched server ignores
the parameter and answers at once without the header, and the loop sleeps
``poll_interval`` as upstream's does; so does it after a failed request.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import httpx
from tenacity import AsyncRetrying, Retrying, stop_after_attempt

from ..auth import key_from_env, validate_key
from ..compat import AgentLightningClient, LegacyRollout, Task
from ..models import WAIT_HEADER, AttemptRollout, AttemptTask
from .claims import Claim, ClaimBook
from .heartbeats import Heartbeats
from .lifecycle import track
from .transport import RETRY, Transport

logger = logging.getLogger(__package__)

RELEASE_TIMEOUT = 2.0
"""Seconds a release may take; it is best effort, and may run at interpreter exit."""
DEFAULT_POLL_WAIT = 20.0
"""Seconds each ``GET /task`` asks the server to hold it (a patched server caps it, 20 s by default)."""


# The raw ``/task`` answer upstream's poll loop just parsed (it drops the attempt fields).
_LAST_TASK_JSON: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "lightning_attempts_task_json", default=None
)
# After an empty /task answer the server held, by client: the sleep left of poll_interval.
_POLL_PAUSE: contextvars.ContextVar[tuple[int, float] | None] = contextvars.ContextVar(
    "lightning_attempts_poll_pause", default=None
)


def _interrupted() -> bool:
    """Whether an interrupt (not an ordinary exception) is unwinding the caller, e.g. into a ``finally``."""
    error = sys.exc_info()[1]
    return error is not None and not isinstance(error, Exception)


class AttemptAwareClient(AgentLightningClient):
    """Drop-in ``AgentLightningClient`` that submits each result with its claim's attempt id.

    Same constructor as upstream (``endpoint``, ``poll_interval``, ``timeout``), plus
    keyword-only ``submit_attempts`` (tries per submission, default 5),
    ``heartbeat_fraction`` (heartbeat every this fraction of the lease the server
    announces, default 1/3; ``None`` turns heartbeats off), ``poll_wait`` (seconds each
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
            raise ValueError("submit_attempts must be at least 1")
        if poll_wait is not None and poll_wait < 0:
            raise ValueError("poll_wait must not be negative")
        key = key_from_env() if api_key is None else validate_key(api_key)
        if key is not None:  # every request goes through the pooled clients built with these headers
            self._default_headers = {**self._default_headers, "Authorization": f"Bearer {key}"}
        self.submit_attempts = submit_attempts
        self.heartbeat_fraction = heartbeat_fraction
        self.poll_wait = poll_wait or None
        self._reset_process_state()
        track(self)

    def _reset_process_state(self) -> None:
        """State that must not cross a fork: locks, pooled connections, heartbeat workers."""
        self._book = ClaimBook(self)
        self._warned_unauthorized = False
        self._release_supported = True  # until the server answers /release with 404
        self._transport = Transport(self._pool_options)
        self._heartbeats = Heartbeats(self)

    # -- transport ------------------------------------------------------------

    def _pool_options(self) -> dict[str, Any]:
        """httpx's options for this client's pooled connections, read when a pool is built."""
        return {"timeout": self.timeout, "headers": self._default_headers}

    @property
    def poll_interval(self) -> float:  # pyright: ignore[reportIncompatibleVariableOverride]
        """Seconds upstream's poll loop sleeps after an empty ``/task`` answer.

        What it was set to; but right after an empty answer that the server held
        (``GET /task?wait=S``), in the thread or task that polled, only what is left of
        it, or of the wait if shorter, once the poll's own duration is counted: 0 after a
        poll held until its wait ended, so the poll loop polls again at once.
        """
        pause = _POLL_PAUSE.get()
        if pause is not None and pause[0] == id(self):
            return pause[1]
        return self._poll_interval

    @poll_interval.setter
    def poll_interval(self, seconds: float) -> None:
        self._poll_interval = seconds

    def _long_poll(self, url: str) -> float | None:
        """The wait to ask for when ``url`` is ``/task`` (None: a plain request); forget the last pause."""
        if not url.endswith(self._next_task_uri):
            return None
        _POLL_PAUSE.set(None)
        return self.poll_wait

    def _request_json(self, url: str) -> dict[str, Any] | None:
        wait = self._long_poll(url)
        started = time.monotonic()
        try:
            if wait is None:
                response = self._transport.http().get(url)
            else:
                response = self._transport.http().get(url, params={"wait": wait}, timeout=self.timeout + wait)
            self._check_key(response)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError) as error:
            logger.debug("GET %s failed: %s", url, error)
            return None
        return self._remember_task_json(url, body, response, time.monotonic() - started)

    async def _request_json_async(self, url: str) -> dict[str, Any] | None:
        wait = self._long_poll(url)
        started = time.monotonic()
        try:
            if wait is None:
                response = await self._transport.ahttp().get(url)
            else:
                response = await self._transport.ahttp().get(url, params={"wait": wait}, timeout=self.timeout + wait)
            self._check_key(response)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError) as error:
            logger.debug("GET %s failed: %s", url, error)
            return None
        return self._remember_task_json(url, body, response, time.monotonic() - started)

    def _check_key(self, response: httpx.Response) -> None:
        """Say once at WARNING that the server wants a key this client lacks (polls fail only at DEBUG)."""
        if response.status_code == 401 and not self._warned_unauthorized:
            self._warned_unauthorized = True
            sent = "Authorization" in self._default_headers
            logger.warning(
                "Server %s refused this client (401): %s. Set AGL_KEY (or api_key=...) to the server's key.",
                self.endpoint,
                "wrong API key" if sent else "no API key",
            )

    def _remember_task_json(
        self, url: str, body: dict[str, Any], response: httpx.Response, elapsed: float
    ) -> dict[str, Any]:
        if not url.endswith(self._next_task_uri):
            return body
        if isinstance(body.get("task"), dict):
            _LAST_TASK_JSON.set(body["task"])
        elif held := _held(response):
            # The server held this poll: sleep only what is left of the shorter of the two
            # (nothing, when it held it that long; never a busy loop, whatever it says).
            _POLL_PAUSE.set((id(self), max(min(self._poll_interval, held) - elapsed, 0.0)))
        return body

    def _post_json(self, url: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.submit_attempts), **RETRY):
                with attempt:
                    response = self._transport.http().post(url, json=payload)
                    return self._answer(url, payload, response)
        except (httpx.HTTPError, ValueError) as error:
            logger.error("POST %s failed for %s: %s", url, payload.get("rollout_id"), error)
        return None

    async def _post_json_async(self, url: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(self.submit_attempts), **RETRY):
                with attempt:
                    response = await self._transport.ahttp().post(url, json=payload)
                    return self._answer(url, payload, response)
        except (httpx.HTTPError, ValueError) as error:
            logger.error("POST %s failed for %s: %s", url, payload.get("rollout_id"), error)
        return None

    def _answer(self, url: str, payload: dict[str, Any], response: httpx.Response) -> dict[str, Any] | None:
        """The server's answer as a dict; raises on 5xx so that it is retried."""
        if response.status_code in (400, 409):  # refused or dropped: an answer, not a failure
            body: dict[str, Any] = response.json()
            logger.warning(
                "Server %s %s (attempt %s): %s",
                body.get("status", "refused"),
                payload.get("rollout_id"),
                payload.get("attempt_id"),
                body.get("message") or body.get("reason"),
            )
            return body
        response.raise_for_status()
        return response.json()

    # -- claims ---------------------------------------------------------------

    def poll_next_task(self) -> AttemptTask | None:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Poll until a task is available (as upstream does) and remember it as a claim.

        First, release this thread's or task's previous claim if it was never submitted
        (the runner skipped it).
        """
        skipped = self._book.skipped()
        if skipped is not None:
            self.release(skipped)
        task, claim = self._claim(super().poll_next_task())
        if claim is not None and claim.lease_seconds and self.heartbeat_fraction:
            self._heartbeats.watch(claim)
        return task

    async def poll_next_task_async(self) -> AttemptTask | None:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Poll until a task is available (as upstream does) and remember it as a claim.

        First, release this thread's or task's previous claim if it was never submitted
        (the runner skipped it).
        """
        skipped = self._book.skipped()
        if skipped is not None:
            await self.release_async(skipped)
        task, claim = self._claim(await super().poll_next_task_async())
        if claim is not None and claim.lease_seconds and self.heartbeat_fraction:
            self._heartbeats.watch_in_loop(claim)
        return task

    def _claim(self, task: Task | None) -> tuple[AttemptTask | None, Claim | None]:
        """Upstream parsed ``/task`` as a plain Task; reparse it with its attempt and remember the claim."""
        if task is None:
            return None, None
        raw = _LAST_TASK_JSON.get()
        if raw is not None and raw.get("rollout_id") == task.rollout_id:
            attempt_task = AttemptTask.model_validate(raw)
        else:
            attempt_task = AttemptTask.model_validate(task.model_dump())
        return attempt_task, self._book.add(attempt_task)

    def attempt_id_for(self, rollout: Any) -> str | None:
        """The attempt id a submission of ``rollout`` carries (see ``claims.py`` for the order of choice)."""
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
        attempt_id = self.attempt_id_for(rollout)
        if attempt_id is not None and _interrupted():
            self.release(self._book.claim_of(rollout.rollout_id, attempt_id))
            return None
        try:
            return super().post_rollout(AttemptRollout.from_rollout(rollout, attempt_id))
        finally:
            self._book.forget(attempt_id)

    async def post_rollout_async(self, rollout: LegacyRollout) -> dict[str, Any] | None:
        """Submit ``rollout`` with its attempt id; return the server's answer (None on failure).

        Called while an interrupt or a cancellation unwinds the caller, it releases the
        claim instead and returns None.
        """
        attempt_id = self.attempt_id_for(rollout)
        if attempt_id is not None and _interrupted():
            await self.release_async(self._book.claim_of(rollout.rollout_id, attempt_id))
            return None
        try:
            return await super().post_rollout_async(AttemptRollout.from_rollout(rollout, attempt_id))
        finally:
            self._book.forget(attempt_id)

    # -- releases -------------------------------------------------------------

    @property
    def _release_url(self) -> str:
        return self.endpoint.rstrip("/") + "/release"

    def release(self, claim: Claim) -> bool:
        """Give ``claim`` back to the server so that its task is requeued now; True if it was.

        The claim is forgotten (and no longer heartbeaten) whatever the answer. Best
        effort: failures are logged at DEBUG, never raised.
        """
        self._book.forget(claim.attempt_id)
        if not self._release_supported:
            return False
        try:
            response = self._transport.http().post(
                self._release_url, json=_heartbeat_body(claim), timeout=RELEASE_TIMEOUT
            )
        except httpx.HTTPError as error:
            logger.debug("Release of %s (attempt %s) failed: %s", claim.rollout_id, claim.attempt_id, error)
            return False
        return self._release_answer(claim, response)

    async def release_async(self, claim: Claim) -> bool:
        """Give ``claim`` back to the server so that its task is requeued now; True if it was."""
        self._book.forget(claim.attempt_id)
        if not self._release_supported:
            return False
        try:
            response = await self._transport.ahttp().post(
                self._release_url, json=_heartbeat_body(claim), timeout=RELEASE_TIMEOUT
            )
        except httpx.HTTPError as error:
            logger.debug("Release of %s (attempt %s) failed: %s", claim.rollout_id, claim.attempt_id, error)
            return False
        return self._release_answer(claim, response)

    def _release_answer(self, claim: Claim, response: httpx.Response) -> bool:
        if response.status_code == 200:
            logger.info("Released claim of %s (attempt %s): the task is requeued", claim.rollout_id, claim.attempt_id)
            return True
        if response.status_code in (404, 405):  # a server without /release (unpatched upstream)
            self._release_supported = False
        logger.debug(
            "Release of %s (attempt %s) answered %d: %s",
            claim.rollout_id,
            claim.attempt_id,
            response.status_code,
            response.text[:200],
        )
        return False

    def release_open_claims(self) -> int:
        """Release every claim this client holds and has not submitted; return how many were released."""
        return sum(self.release(claim) for claim in self.open_claims())

    async def release_open_claims_async(self) -> int:
        """Release every claim this client holds and has not submitted; return how many were released."""
        released = 0
        for claim in self.open_claims():
            released += await self.release_async(claim)
        return released

    # -- heartbeats -----------------------------------------------------------

    def beat(self, claim: Claim) -> bool:
        """Send one heartbeat for ``claim``; False when the server says it lost the claim."""
        try:
            response = self._transport.http().post(self._heartbeat_url, json=_heartbeat_body(claim))
        except httpx.HTTPError as error:
            logger.debug("Heartbeat for %s failed: %s", claim.rollout_id, error)
            return True  # not known to be lost; try again next time
        return self._heartbeat_answer(claim, response)

    async def beat_async(self, claim: Claim) -> bool:
        """Send one heartbeat for ``claim``; False when the server says it lost the claim."""
        try:
            response = await self._transport.ahttp().post(self._heartbeat_url, json=_heartbeat_body(claim))
        except httpx.HTTPError as error:
            logger.debug("Heartbeat for %s failed: %s", claim.rollout_id, error)
            return True
        return self._heartbeat_answer(claim, response)

    @property
    def _heartbeat_url(self) -> str:
        return self.endpoint.rstrip("/") + "/heartbeat"

    def _heartbeat_answer(self, claim: Claim, response: httpx.Response) -> bool:
        if response.status_code == 409:
            logger.warning(
                "Attempt %s of %s lost its claim (%s): its result will be dropped",
                claim.attempt_id,
                claim.rollout_id,
                response.json().get("reason"),
            )
            self._book.lost(claim)
            return False
        return True

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Release open claims, stop heartbeats and close pooled connections."""
        self.release_open_claims()
        self._heartbeats.stop()
        self._transport.close()

    async def aclose(self) -> None:
        """Release open claims and close this event loop's pooled connections."""
        await self.release_open_claims_async()
        await self._transport.aclose()

    def _after_fork(self) -> None:
        self._reset_process_state()


def _held(response: httpx.Response) -> float:
    """How long the server says it would hold this ``/task`` poll; 0 when it did not (an unpatched server)."""
    try:
        seconds = float(response.headers.get(WAIT_HEADER, "0"))
    except ValueError:
        return 0.0
    return seconds if 0 < seconds < float("inf") else 0.0


def _heartbeat_body(claim: Claim) -> dict[str, str]:
    return {"rollout_id": claim.rollout_id, "attempt_id": claim.attempt_id}
