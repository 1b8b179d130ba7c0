"""RemoteServer: ``AttemptAwareServer``'s producer methods over HTTP, for a trainer in another process.

A trainer that owns its server queues tasks, publishes resources and collects results
in-process. ``RemoteServer`` does the same to a server running elsewhere (``lightning-attempts
serve``) through its producer routes (``server/producer_routes.py``), with the same method
names and results (``AttemptRollout`` for each rollout), so that a script can swap
``AttemptAwareServer(...)`` and ``start()`` for ``RemoteServer(url)`` and ``start()``.

Every request is tried up to ``attempts`` times when it fails in transport or the server fails
(5xx): queueing, publishing, taking and cancelling carry a ``request_id``, so a retry after a lost
answer gets the first answer rather than queueing twice, losing the results taken or the ids cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from ..errors import RequestRefused, ServerNotRunning, Unauthorized
from ..keys import key_from_env, validate_key
from ..models import AttemptRollout
from ..producer_models import MAX_TASKS, AttemptRecord, Published, Queued, Rollouts, RolloutState, Waited
from .protocol import Send
from .transport import Transport

logger = logging.getLogger(__package__)  # "lightning_attempts.client"

Mode = Literal["train", "val", "test"]
HISTORY = TypeAdapter(list[AttemptRecord])
NO_HOLD_PAUSE = 1.0
"""Seconds between two waits the server does not hold (its ``max_poll_wait`` is 0, or it is stopping)."""


class RemoteServer:
    """The producer side of an ``AttemptAwareServer`` that runs in another process (``lightning-attempts serve``).

    ``endpoint`` is the server's URL. ``api_key`` is sent on every request as
    ``Authorization: Bearer <key>``; ``None`` (the default) reads ``AGL_KEY``, ``""`` sends none.
    ``timeout`` is each request's, in seconds (a held wait gets the time it asks to be held on
    top); ``attempts`` the tries of each request; ``max_wait`` the longest a wait asks the server
    to hold it (the server caps it at its ``max_poll_wait``, 20 s by default).

    Errors: ``Unauthorized`` without the server's key; ``RequestRefused`` (a ``ValueError``)
    for a request the server refused, naming what was wrong (e.g. an unknown rollout id);
    ``ServerNotRunning`` (a ``RuntimeError``) when no server answers, it is between runs, or it
    fails (5xx) on every try, raised from the last ``httpx`` error. Each is a ``LightningAttemptsError``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        attempts: int = 5,
        max_wait: float = 60.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not max_wait > 0:
            raise ValueError("max_wait must be positive")
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.attempts = attempts
        self.max_wait = max_wait
        key = key_from_env() if api_key is None else validate_key(api_key)
        self._transport = Transport(self, {"Authorization": f"Bearer {key}"} if key is not None else {})

    def __repr__(self) -> str:
        return f"RemoteServer({self.endpoint!r})"

    # -- connection -----------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Return once the server answers, trying for up to ``timeout`` seconds (it may still be starting).

        It starts nothing: the server runs elsewhere. Raises ``Unauthorized`` without its key, and
        ``ServerNotRunning`` when nothing answers in time, what answers is no attempt-aware server, or it fails (5xx).
        """
        deadline = time.monotonic() + timeout
        pause = 0.05
        while True:
            try:
                response = await self._transport.asend(Send("GET", self.endpoint + "/attempts/stats"))
            except httpx.TransportError as error:
                if time.monotonic() + pause > deadline:
                    raise ServerNotRunning(f"No server answers at {self.endpoint}: {error!r}") from error
                await asyncio.sleep(pause)  # retrying a connection, not waiting for a result
                pause = min(2 * pause, 1.0)
                continue
            if response.status_code == 404:
                raise ServerNotRunning(f"{self.endpoint} is no lightning-attempts server (GET /attempts/stats: 404)")
            self._checked(response, 1, action="RemoteServer.start() (or async with RemoteServer(...))")
            logger.info("Producing for the server at %s", self.endpoint)
            return

    async def stop(self) -> None:
        """Close this client's connections (on the running event loop); the server keeps serving."""
        await self._transport.aclose()

    async def __aenter__(self) -> RemoteServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- tasks and resources --------------------------------------------------

    async def queue_task(
        self,
        sample: Any,
        mode: Mode | None = None,
        resources_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Queue a task for the workers (``sample``: any JSON value); return its rollout id."""
        (rollout_id,) = await self.queue_tasks([sample], mode=mode, resources_id=resources_id, metadata=metadata)
        return rollout_id

    async def queue_tasks(
        self,
        samples: Iterable[Any],
        *,
        mode: Mode | None = None,
        resources_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[str]:
        """Queue a batch, each task with these fields; return the rollout ids in order.

        One request queues at most ``MAX_TASKS`` (10,000), all or none: a larger batch is sent in several,
        in order. An unknown ``resources_id`` refuses the first (``RequestRefused``): none is queued. Should
        a later request fail after its retries, the tasks of those before it stay queued.
        """
        task = {"mode": mode, "resources_id": resources_id, "metadata": metadata}
        tasks = [{"sample": sample, **task} for sample in samples]
        rollout_ids: list[str] = []
        for start in range(0, len(tasks), MAX_TASKS):
            body = {"tasks": to_jsonable_python(tasks[start : start + MAX_TASKS]), "request_id": _request_id()}
            response = await self._post("/tasks", body, "Queueing tasks")
            rollout_ids += Queued.model_validate_json(response.content).rollout_ids
        return rollout_ids

    async def update_resources(self, resources: Mapping[str, Any]) -> str:
        """Publish resources (e.g. ``{"main_llm": LLM(...)}``) as the latest version; return its id."""
        body = {"resources": to_jsonable_python(resources), "request_id": _request_id()}
        response = await self._post("/resources", body, "Publishing resources")
        return Published.model_validate_json(response.content).resources_id

    async def cancel_pending(self, rollout_ids: Iterable[str] | None = None) -> list[str]:
        """Cancel the given tasks (default: every queued or claimed one); return those cancelled."""
        ids = None if rollout_ids is None else list(rollout_ids)
        body = {"rollout_ids": ids, "request_id": _request_id()}
        response = await self._post("/tasks/cancel", body, "Cancelling tasks")
        return list(response.json()["cancelled"])

    # -- results --------------------------------------------------------------

    async def rollout_state(self, rollout_id: str) -> RolloutState:
        """Where a task is (``stored``, ``pending`` or ``finished``) and its stored result, left on the server."""
        response = await self._get(f"/rollouts/{rollout_id}", f"Reading {rollout_id}")
        return RolloutState.model_validate_json(response.content)

    async def get_completed_rollout(self, rollout_id: str) -> AttemptRollout | None:
        """Take the task's result off the server, as upstream's does; None if none is stored."""
        taken = await self._take([rollout_id])
        return taken[0] if taken else None

    async def retrieve_completed_rollouts(self) -> list[AttemptRollout]:
        """Take every stored result off the server: at most one per task."""
        return await self._take(None)

    async def poll_completed_rollout(self, rollout_id: str, timeout: float | None = None) -> AttemptRollout | None:
        """Take the task's result once it is stored; None after ``timeout`` seconds (falsy: no limit).

        Also None at once when the task finished without a result to take (it was cancelled, or
        another caller took its result), where upstream's would wait for the timeout. Raises
        ``RequestRefused`` for a rollout id the server neither holds nor remembers.
        """
        deadline = _deadline(timeout or None)
        while True:
            answer = await self._until_finished([rollout_id], deadline)
            if not answer.rollouts:  # still pending at the deadline, or finished without a result to take
                return None
            taken = await self.get_completed_rollout(rollout_id)
            if taken is not None:
                return taken  # else another caller took it first: the next wait says so

    async def wait_for_rollouts(self, rollout_ids: Iterable[str], timeout: float | None = None) -> list[AttemptRollout]:
        """The stored results among ``rollout_ids``, once every one is finished or ``timeout`` passes (None: no limit).

        As the server's: it does not take them (``retrieve_completed_rollouts()`` still returns them), a
        cancelled task counts as finished, and an id the server neither holds nor remembers raises
        ``RequestRefused`` (a ``ValueError``). It returns as soon as the last result is stored.
        """
        return (await self._until_finished(list(rollout_ids), _deadline(timeout))).rollouts

    async def attempt_stats(self) -> dict[str, Any]:
        """The server's counters (``GET /attempts/stats``)."""
        response = await self._get("/attempts/stats", "Reading the stats")
        return dict(response.json())

    async def attempt_history(self, rollout_id: str) -> list[AttemptRecord] | None:
        """Each claim of a task (attempt id, times, outcome), oldest first, as the server's ``attempt_history``
        (``GET /attempts/{rollout_id}``); None for a task the server neither holds nor remembers."""
        try:
            response = await self._get(f"/attempts/{quote(rollout_id, safe='')}", f"Reading {rollout_id}'s attempts")
        except RequestRefused as refused:
            if refused.status == 404:
                return None
            raise
        return HISTORY.validate_json(response.content)

    # -- requests -------------------------------------------------------------

    async def _take(self, rollout_ids: list[str] | None) -> list[AttemptRollout]:
        body = {"rollout_ids": rollout_ids, "request_id": _request_id()}
        response = await self._post("/rollouts/take", body, "Taking results")
        return Rollouts.model_validate_json(response.content).rollouts

    async def _until_finished(self, rollout_ids: list[str], deadline: float | None) -> Waited:
        """Held waits, one after another, until none of ``rollout_ids`` is pending or ``deadline`` passes."""
        while True:
            remaining = _remaining(deadline)
            answer = await self._wait(rollout_ids, remaining)
            if not answer.pending or remaining == 0:
                return answer
            if answer.held == 0:  # the server holds no wait (max_poll_wait=0, or it is stopping): ask in a while
                await asyncio.sleep(NO_HOLD_PAUSE if remaining is None else min(NO_HOLD_PAUSE, remaining))

    async def _wait(self, rollout_ids: list[str], timeout: float | None) -> Waited:
        """One held ``POST /rollouts/wait``: at most ``timeout`` seconds (None: ``max_wait``), as the server caps it."""
        asked = self.max_wait if timeout is None else min(timeout, self.max_wait)
        body = {"rollout_ids": rollout_ids, "timeout": asked}
        response = await self._post("/rollouts/wait", body, "Waiting for results", timeout=asked + self.timeout)
        return Waited.model_validate_json(response.content)

    async def _get(self, path: str, action: str) -> httpx.Response:
        """``GET path``; ``action`` names it in the retry log ("Reading the stats")."""
        return await self._request(Send("GET", self.endpoint + path, attempts=self.attempts, action=action))

    async def _post(self, path: str, body: dict[str, Any], action: str, timeout: float | None = None) -> httpx.Response:
        """``POST path``; ``action`` names it in the retry log ("Taking results")."""
        request = Send("POST", self.endpoint + path, json=body, timeout=timeout, attempts=self.attempts, action=action)
        return await self._request(request)

    async def _request(self, request: Send) -> httpx.Response:
        """Send ``request`` (tried up to its ``attempts``); its answer if 200, else the error it means."""
        try:
            response = await self._transport.asend(request)
        except httpx.HTTPStatusError as error:  # a 5xx on the last try
            return self._checked(error.response, request.attempts, error, action=request.action)
        except httpx.TransportError as error:
            raise ServerNotRunning(f"No answer from {request.url}: {error!r}") from error
        return self._checked(response, request.attempts, action=request.action)

    def _checked(
        self,
        response: httpx.Response,
        tries: int,
        failure: httpx.HTTPStatusError | None = None,
        *,
        action: str | None = None,
    ) -> httpx.Response:
        """``response`` if 200; else the package's exception it means, raised from ``failure`` (or one made here).

        ``action`` is what the caller asked for ("Queueing tasks"), which ``Unauthorized`` names.
        """
        status = response.status_code
        if status == 200:
            return response
        detail = _detail(response)
        if status == 401:
            asked = action or f"{response.request.method} {response.request.url.path}"
            raise Unauthorized(
                f"{asked}: the server at {self.endpoint} refused it: no or wrong API key (AGL_KEY, or "
                "RemoteServer(api_key=...))"
            )
        if 400 <= status < 500:
            raise RequestRefused(status, detail)
        if failure is None:
            failure = httpx.HTTPStatusError(f"{status} answered", request=response.request, response=response)
        if status == 503:
            raise ServerNotRunning(f"{response.request.url}: the server is not running ({detail})") from failure
        times = "" if tries == 1 else f" on each of {tries} tries"
        message = f"{response.request.url}: the server failed{times} ({status} {response.reason_phrase}: {detail})"
        raise ServerNotRunning(message) from failure


def _detail(response: httpx.Response) -> object:
    """What the server said was wrong: its ``detail`` when that is all it said, else its whole answer."""
    try:
        body: object = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict):
        answer = cast("dict[str, object]", body)
        return answer["detail"] if list(answer) == ["detail"] else answer
    return body


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: none); 0 within a millisecond of it, as timers may fire that early."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    return remaining if remaining > 0.001 else 0.0


def _request_id() -> str:
    """A fresh id for a request that must act once, however often it is sent."""
    return str(uuid.uuid4())
