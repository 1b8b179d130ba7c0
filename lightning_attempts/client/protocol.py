"""The client's protocol: each step written once, for the sync and the async path alike.

A step is a generator that does no I/O (as h11 keeps I/O out of its protocol): it yields
what it needs done and is sent back the result, or has the failure thrown in. It may yield

- ``Send``: an HTTP request (sent back its ``httpx.Response``; ``transport.py`` sends it);
- ``Upstream``: one of upstream's own methods, ``poll_next_task`` or ``post_rollout``,
  whose sync or async form the driver calls (upstream's poll loop then runs unchanged, and
  comes back for its requests to ``get_json`` and ``post_json``);
- ``Watch``: heartbeat a claim, from the client's heartbeat thread (``heartbeats.py``);
- ``Pause``: sleep (``time.sleep``, or ``asyncio.sleep`` on the async path).

``AttemptAwareClient`` runs each step with its sync driver or its async one, which only do
the I/O. The steps:

- ``get_json``, the long poll: every ``GET /task`` asks the server to hold it
  (``?wait=poll_wait``, 20 s by default; the request's timeout is ``timeout`` plus that). A
  patched server answers as soon as a task is claimed for the poll, and says in a header that
  it held it; then upstream's poll loop polls again at once (its ``poll_interval`` reads as
  what is left of it: usually 0). An unpatched server ignores the parameter and answers at
  once without the header, and the loop sleeps ``poll_interval`` as upstream's does; so does
  it after a failed request. The raw task is remembered: upstream's parsing drops the attempt.
- ``poll``: a claim, remembered in the claim book (``claims.py``), heartbeaten under a lease. A claim
  the runner skipped is released first, as given back unrun (``no_resources`` when its resources
  could not be fetched, else ``skipped``), and the poll then waits ``SKIP_BACKOFF`` seconds, doubling
  with each skip in a row up to ``SKIP_BACKOFF_MAX``, until the runner posts a result: a worker that
  cannot run tasks costs the run time, not tasks, and leaves them to the workers that can.
- ``resources``: the resources the runner fetches for the claim, its LLM endpoints on the daemon's
  attempt-aware proxy naming the attempt (``resources.py``); a failed fetch is noted on the claim.
- ``submit`` and ``post_json``: a result posted with its claim's attempt id; transport failures
  and 5xx are retried; a dropped result is logged and returned, never raised.
- ``release``: a claim given back (``POST /release``), so that its task is requeued at once
  rather than after its timeout: a claim the runner skipped; the claim whose result the runner
  posts while an interrupt (Ctrl+C, ``SystemExit``, a cancelled task) unwinds it, instead of
  the runner's empty default result; every open claim on ``close()``, ``aclose()`` and at the
  process's end (``lifecycle.py``). Each says why (``models.ReleaseReason``) and who (``host:pid``).
  Best effort with a short timeout, logged, never raised; an unpatched server (404) is not asked again.
- ``beat``: a heartbeat, which may learn that the claim is lost.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import sys
import time
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

import httpx

from ..compat import LegacyRollout, ResourcesUpdate, Task
from ..models import WAIT_HEADER, AttemptRollout, AttemptTask, ReleaseReason
from .claims import Claim, ClaimBook
from .resources import scoped

logger = logging.getLogger(__package__)

RELEASE_TIMEOUT = 2.0
"""Seconds a release may take; it is best effort, and may run at interpreter exit."""
SKIP_BACKOFF = 1.0
"""Seconds a poll waits after the runner skipped a claim (given back unrun); doubled for each skip in a row."""
SKIP_BACKOFF_MAX = 30.0
"""The longest such wait."""
SKIPS_BEFORE_WARNING = 3
"""Skips in a row after which the client says at WARNING that its runner cannot run tasks."""


@dataclass(slots=True)
class Send:
    """An HTTP request a step asks for; it is sent back the ``httpx.Response``."""

    method: str
    url: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    timeout: float | None = None
    """Seconds; None: the pooled client's (``timeout``)."""
    attempts: int = 1
    """Tries at most: above 1, transport failures and 5xx answers are tried again (``transport.RETRY``)."""
    action: str | None = None
    """What the request does, as the retry log names it ("Submission"); None: its method and URL."""


@dataclass(slots=True)
class Upstream:
    """A call of upstream's own ``method`` (on the async path, ``async_method``); it is sent back what that returns."""

    method: str
    async_method: str
    arg: Any = None
    """The argument, if any (None: the method takes none)."""


@dataclass(slots=True)
class Watch:
    """Heartbeat ``claim`` from the heartbeat thread, until it is submitted or lost."""

    claim: Claim


@dataclass(slots=True)
class Pause:
    """Sleep ``seconds`` (the thread, or the asyncio task)."""

    seconds: float


T = TypeVar("T")
Step: TypeAlias = Generator[Send | Upstream | Watch | Pause, Any, T]
"""A protocol step returning ``T``; a driver runs it."""

_POLL = Upstream("poll_next_task", "poll_next_task_async")
_LATEST = Upstream("get_latest_resources", "get_latest_resources_async")
_BY_ID = ("get_resources_by_id", "get_resources_by_id_async")

# The raw ``/task`` answer upstream's poll loop just parsed (it drops the attempt fields).
_LAST_TASK_JSON: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "lightning_attempts_task_json", default=None
)
# After an empty /task answer the server held, by client: the sleep left of poll_interval.
_POLL_PAUSE: contextvars.ContextVar[tuple[int, float] | None] = contextvars.ContextVar(
    "lightning_attempts_poll_pause", default=None
)


def poll_pause(client: object) -> float | None:
    """What ``client``'s poll loop sleeps in this thread or task after an empty answer the server held; else None."""
    pause = _POLL_PAUSE.get()
    return pause[1] if pause is not None and pause[0] == id(client) else None


class Options(Protocol):
    """What the steps read of the client (``AttemptAwareClient``), on each use: its user may change them."""

    endpoint: str
    timeout: float
    poll_wait: float | None
    submit_attempts: int
    heartbeat_fraction: float | None

    def attempt_id_for(self, rollout: Any) -> str | None: ...


class Steps:
    """One client's protocol steps in this process, and what they learnt of the server."""

    def __init__(self, client: Options, book: ClaimBook, *, task_uri: str, keyed: bool) -> None:
        self._client: Options = weakref.proxy(client)  # the client holds its steps, not the other way round
        self._key = id(client)  # of the client's pause (``poll_pause``)
        self._book = book
        self._task_uri = task_uri  # upstream's ``_next_task_uri``
        self._keyed = keyed  # whether requests carry an API key
        self._warned_unauthorized = False
        self._release_supported = True  # until the server answers /release with 404
        self._worker = f"{socket.gethostname()}:{os.getpid()}"  # who claims and releases (rebuilt after a fork)
        self._skips = 0  # claims skipped in a row, by any of this client's runners in this process

    # -- the long poll --------------------------------------------------------

    def get_json(self, url: str, interval: float) -> Step[dict[str, Any] | None]:
        """``GET url`` (upstream's ``_request_json``): the JSON answer, None on failure.

        For ``/task``, a long poll; ``interval`` is the poll interval as set, whose rest
        the poll loop sleeps after an empty answer the server held (see ``poll_pause``).
        """
        polls = url.endswith(self._task_uri)
        params: dict[str, Any] = {}
        timeout: float | None = None
        if polls:
            _POLL_PAUSE.set(None)
            if self._client.heartbeat_fraction:  # the claim is leased from the start, not from a first beat
                params["heartbeats"] = 1
            params["worker"] = self._worker  # its claims' history (and the dashboard) name it
            if (wait := self._client.poll_wait) is not None:
                params["wait"], timeout = wait, self._client.timeout + wait
        started = time.monotonic()
        try:
            response: httpx.Response = yield Send("GET", url, params=params or None, timeout=timeout)
            self._check_key(response)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError) as error:
            logger.debug("GET %s failed: %s", url, error)
            return None
        if polls:
            self._remember_task(body, response, time.monotonic() - started, interval)
        return body

    def _check_key(self, response: httpx.Response) -> None:
        """Say once at WARNING that the server wants a key this client lacks (polls fail only at DEBUG)."""
        if response.status_code == 401 and not self._warned_unauthorized:
            self._warned_unauthorized = True
            logger.warning(
                "Server %s refused this client (401): %s. Set AGL_KEY (or api_key=...) to the server's key.",
                self._client.endpoint,
                "wrong API key" if self._keyed else "no API key",
            )

    def _remember_task(self, body: dict[str, Any], response: httpx.Response, elapsed: float, interval: float) -> None:
        if isinstance(body.get("task"), dict):
            _LAST_TASK_JSON.set(body["task"])
        elif held := _held(response):
            # The server held this poll: sleep only what is left of the shorter of the two
            # (nothing, when it held it that long; never a busy loop, whatever it says).
            _POLL_PAUSE.set((self._key, max(min(interval, held) - elapsed, 0.0)))

    # -- claims ---------------------------------------------------------------

    def poll(self) -> Step[AttemptTask | None]:
        """Poll until a task is available (upstream's loop) and remember it as a claim.

        First, release this thread's or task's previous claim if it was never submitted
        (the runner skipped it). Heartbeat the new claim if the server announced a lease.
        """
        skipped = self._book.current()
        if skipped is not None:
            yield from self.release(skipped, "no_resources" if self._book.without_resources(skipped) else "skipped")
            yield Pause(self._skipped())
        task: Task | None = yield _POLL
        if task is None:
            return None
        attempt_task = _with_attempt(task)
        claim = self._book.add(attempt_task)
        if claim is not None and claim.lease_seconds and self._client.heartbeat_fraction:
            yield Watch(claim)
        return attempt_task

    def resources(self, resource_id: str | None) -> Step[ResourcesUpdate | None]:
        """Upstream's fetch of resources ``resource_id`` (cached by id) or, for None, of the latest; its LLM
        endpoints on the daemon's attempt-aware proxy scoped to this thread's or task's claim (``resources.scoped``)."""
        fetch = _LATEST if resource_id is None else Upstream(*_BY_ID, resource_id)
        update: ResourcesUpdate | None = yield fetch
        claim = self._book.current()
        if claim is not None and update is None:
            self._book.found_no_resources(claim)
        return update if update is None or claim is None else scoped(update, claim)

    # -- submissions ----------------------------------------------------------

    def submit(self, rollout: LegacyRollout) -> Step[dict[str, Any] | None]:
        """Submit ``rollout`` with its attempt id (upstream's ``post_rollout``): the server's answer, None on failure.

        Run while an interrupt or a cancellation unwinds the caller (the runner posts its
        empty default result in a ``finally``), it releases the claim instead and returns None.
        """
        attempt_id = self._client.attempt_id_for(rollout)
        if attempt_id is not None and _interrupted():
            yield from self.release(self._book.claim_of(rollout.rollout_id, attempt_id), "interrupted")
            return None
        self._skips = 0  # the runner ran a task: it can
        try:
            attempt_rollout = AttemptRollout.from_rollout(rollout, attempt_id)
            return (yield Upstream("post_rollout", "post_rollout_async", attempt_rollout))
        finally:
            self._book.forget(attempt_id)

    def post_json(self, url: str, payload: dict[str, Any]) -> Step[dict[str, Any] | None]:
        """``POST url`` (upstream's ``_post_json``), tried up to ``submit_attempts`` times: the answer, or None."""
        try:
            response: httpx.Response = yield Send(
                "POST", url, json=payload, attempts=self._client.submit_attempts, action="Submission"
            )
            return _answer(payload, response)
        except (httpx.HTTPError, ValueError) as error:
            logger.error("POST %s failed for %s: %s", url, payload.get("rollout_id"), error)
        return None

    # -- releases -------------------------------------------------------------

    def release(self, claim: Claim, reason: ReleaseReason | None = None) -> Step[bool]:
        """Give ``claim`` back, for ``reason`` (None: unsaid, counted as run), so that its task is requeued now; True
        if it was. Forgotten whatever the answer."""
        self._book.forget(claim.attempt_id)
        if not self._release_supported:
            return False
        body = {**_claim_body(claim), "worker": self._worker}
        if reason is not None:
            body["reason"] = reason
        try:
            response: httpx.Response = yield Send("POST", self._url("/release"), json=body, timeout=RELEASE_TIMEOUT)
        except httpx.HTTPError as error:
            logger.debug("Release of %s (attempt %s) failed: %s", claim.rollout_id, claim.attempt_id, error)
            return False
        if response.status_code == 200:
            logger.info(
                "Released claim of %s (attempt %s, %s): the task is requeued",
                claim.rollout_id,
                claim.attempt_id,
                reason or "no reason given",
            )
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

    def release_open(self) -> Step[int]:
        """Release every open claim, one after the other; how many were released."""
        released = 0
        for claim in self._book.open_claims():
            released += yield from self.release(claim, "closing")
        return released

    def _skipped(self) -> float:
        """The runner skipped a claim: count it (a WARNING at the third in a row); the wait before the next poll."""
        self._skips += 1
        wait = min(SKIP_BACKOFF * 2 ** (self._skips - 1), SKIP_BACKOFF_MAX)
        if self._skips == SKIPS_BEFORE_WARNING:
            logger.warning(
                "This worker gave back %d claims in a row without running them (its runner could not fetch their "
                "resources, or skipped them): it polls again after %.0fs, then less often (at most every %.0fs), "
                "until it runs a task; the server's log names it as %s",
                self._skips,
                wait,
                SKIP_BACKOFF_MAX,
                self._worker,
            )
        return wait

    # -- heartbeats -----------------------------------------------------------

    def beat(self, claim: Claim) -> Step[bool]:
        """One heartbeat for ``claim``; False when the server says it lost the claim."""
        try:
            response: httpx.Response = yield Send("POST", self._url("/heartbeat"), json=_claim_body(claim))
        except httpx.HTTPError as error:
            logger.debug("Heartbeat for %s failed: %s", claim.rollout_id, error)
            return True  # not known to be lost; try again next time
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

    def _url(self, path: str) -> str:
        return self._client.endpoint.rstrip("/") + path


def _with_attempt(task: Task) -> AttemptTask:
    """Upstream parsed ``/task`` as a plain Task; reparse it with its attempt (from the raw answer)."""
    raw = _LAST_TASK_JSON.get()
    if raw is not None and raw.get("rollout_id") == task.rollout_id:
        return AttemptTask.model_validate(raw)
    return AttemptTask.model_validate(task.model_dump())


def _answer(payload: dict[str, Any], response: httpx.Response) -> dict[str, Any] | None:
    """The server's answer to a submission as a dict; raises on an error other than a refusal or a drop."""
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


def _held(response: httpx.Response) -> float:
    """How long the server says it would hold this ``/task`` poll; 0 when it did not (an unpatched server)."""
    try:
        seconds = float(response.headers.get(WAIT_HEADER, "0"))
    except ValueError:
        return 0.0
    return seconds if 0 < seconds < float("inf") else 0.0


def _claim_body(claim: Claim) -> dict[str, str]:
    return {"rollout_id": claim.rollout_id, "attempt_id": claim.attempt_id}


def _interrupted() -> bool:
    """Whether an interrupt (not an ordinary exception) is unwinding the caller, e.g. into a ``finally``.

    A step sees its caller's exception: a generator's ``sys.exc_info()`` falls back to its driver's.
    """
    error = sys.exc_info()[1]
    return error is not None and not isinstance(error, Exception)
