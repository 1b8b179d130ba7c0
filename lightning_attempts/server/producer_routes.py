"""The producer API: what a trainer in another process does to the server over HTTP, as it would in-process.

A trainer that owns the server calls ``queue_task``, ``update_resources``,
``retrieve_completed_rollouts``, ``wait_for_rollouts`` and ``cancel_pending`` on it. These routes
do the same for one that does not (``lightning-attempts serve``, driven by
``lightning_attempts.client.RemoteServer``):

- ``POST /tasks``: queue tasks (at most ``MAX_TASKS``, 10,000, a request), all or none;
  ``POST /tasks/cancel``: cancel some or every pending one;
- ``POST /resources``: publish a version of the resources (upstream's ``GET /resources/...`` serve it);
- ``GET /rollouts/{rollout_id}``: where a task is, and its stored result, left in place;
- ``POST /rollouts/take``: take stored results off the server (``retrieve_completed_rollouts``);
- ``POST /rollouts/wait``: held until the tasks are finished or the timeout (capped by ``max_poll_wait``)
  passes; the stored results and the ids still pending.

Each answers from the running server's store, or 503 between runs. Bad input is refused (4xx) before
anything changes. A request carrying the ``request_id`` of a successful request of this run gets that
request's answer again and changes nothing, so that a client may retry a take, a queueing or a cancel
whose answer it lost; 409 once that answer is no longer kept (``replays``: the last 32, 64 MiB in all).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response

from ..compat import LegacyRollout
from ..errors import ServerNotRunning
from ..options import Options
from ..producer_models import (
    MAX_TASKS,
    Cancelled,
    CancelTasks,
    Published,
    PublishResources,
    Queued,
    QueueTasks,
    Rollouts,
    RolloutState,
    RolloutStatus,
    TakeRollouts,
    Waited,
    WaitForRollouts,
)
from ..store import AttemptAwareDataStore
from .direct_route import DirectRoute, unprocessable
from .replays import Replays
from .task_count import refuse_too_many_tasks

logger = logging.getLogger(__package__)  # "lightning_attempts.server"

_NOT_RUNNING = {"detail": "Server not fully initialized."}  # upstream's words, as the other routes answer
_BAD_BODY: dict[int | str, dict[str, Any]] = {
    413: {"description": "The body is larger than the server's `max_body_bytes`"},
    422: {"description": "A field is missing, malformed or unknown: `detail` names it; nothing changed"},
    503: {"description": "The server is between runs (starting or stopping)"},
}
_REPEATED: dict[int | str, dict[str, Any]] = {
    409: {"description": "`request_id` was answered already and its answer is no longer kept; nothing changed"}
}


class Producer(Protocol):
    """What the routes use of their server (``AttemptAwareServer``)."""

    options: Options

    @property
    def store(self) -> AttemptAwareDataStore: ...

    async def update_resources(self, resources: Any) -> str: ...

    async def wait_for_rollouts(
        self, rollout_ids: Iterable[str], timeout: float | None = None
    ) -> list[LegacyRollout]: ...


def status_of(store: AttemptAwareDataStore, rollout_id: str) -> RolloutStatus | None:
    """Where the task is; None when the store neither holds nor remembers it."""
    if store.stored((rollout_id,)):
        return "stored"
    try:
        return "pending" if store.unfinished((rollout_id,)) else "finished"
    except ValueError:
        return None


def _rollouts_json(rollouts: Iterable[LegacyRollout]) -> bytes:
    """A JSON array of the rollouts, each serialised by pydantic (traces can be large: no detour through dicts)."""
    return b"[" + b",".join(rollout.model_dump_json().encode() for rollout in rollouts) + b"]"


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _object(**members: bytes) -> Response:
    """A 200 answer: the JSON object of ``members``, each already serialised."""
    body = b",".join(_dumps(name) + b":" + value for name, value in members.items())
    return Response(b"{" + body + b"}", media_type="application/json")


class _HeldWaits:
    """The ``POST /rollouts/wait`` requests being held; ``close`` answers them at once (the server is stopping)."""

    def __init__(self) -> None:
        self._held: set[asyncio.Future[None]] = set()
        self._closed: weakref.ref[AttemptAwareDataStore] | None = None

    def closing(self, store: AttemptAwareDataStore) -> bool:
        """Whether the run of ``store`` is stopping: waits are no longer held."""
        return self._closed is not None and self._closed() is store

    def close(self, store: AttemptAwareDataStore | None) -> None:
        """Answer the held waits now, and hold none from now on in the run of ``store``."""
        self._closed = None if store is None else weakref.ref(store)
        for held in self._held:
            if not held.done():
                held.set_result(None)

    async def hold(self, wait: Awaitable[Any]) -> None:
        """Await ``wait``, unless ``close`` comes first; raise what ``wait`` raised."""
        closed = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(wait)
        self._held.add(closed)
        try:
            await asyncio.wait((waiting, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._held.discard(closed)
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
        if not waiting.cancelled():
            waiting.result()


class ProducerRoutes:
    """The producer routes of one ``AttemptAwareServer``, answering from the store of its current run."""

    def __init__(self, server: Producer) -> None:
        self._server = server
        self._replays = Replays()
        self._waits = _HeldWaits()

    def _store(self) -> AttemptAwareDataStore | None:
        try:
            return self._server.store
        except ServerNotRunning:
            return None

    def close(self) -> None:
        """The server begins to stop: answer the held waits now rather than when their time is up."""
        self._waits.close(self._store())

    def install(self, app: FastAPI) -> None:
        """Add the routes to ``app``; the API key middleware, when there is one, wraps them as every route."""
        direct = DirectRoute.limited(self._server.options.max_body_bytes)
        counted = DirectRoute.limited(self._server.options.max_body_bytes, refuse_too_many_tasks)
        routes: list[tuple[str, Callable[..., Any], str, str, type[Any], dict[int | str, dict[str, Any]]]] = [
            (
                "POST",
                self._queue,
                "/tasks",
                f"Queue tasks (at most {MAX_TASKS:,} a request), all or none; their rollout ids in order",
                Queued,
                _REPEATED,
            ),
            (
                "POST",
                self._cancel,
                "/tasks/cancel",
                "Cancel queued and claimed tasks: given ones, or every one",
                Cancelled,
                _REPEATED,
            ),
            ("POST", self._publish, "/resources", "Publish resources: the new latest version", Published, _REPEATED),
            ("POST", self._take, "/rollouts/take", "Take stored results off the server", Rollouts, _REPEATED),
            (
                "POST",
                self._wait,
                "/rollouts/wait",
                "Wait until tasks are finished (held at most `max_poll_wait`); the stored results, left in place",
                Waited,
                {404: {"description": "Some rollout ids are unknown to the server (`unknown` lists them)"}},
            ),
        ]
        for method, endpoint, path, summary, answer, more in routes:
            app.router.add_api_route(
                path,
                endpoint,
                methods=[method],
                response_model=answer,
                summary=summary,
                route_class_override=counted if path == "/tasks" else direct,
                responses={**_BAD_BODY, **more},
            )
        app.router.add_api_route(
            "/rollouts/{rollout_id}",
            self._read,
            methods=["GET"],
            response_model=RolloutState,
            summary="Where a task is, and its stored result (left in place)",
            responses={
                404: {"description": "The server neither holds nor remembers this rollout id"},
                503: _BAD_BODY[503],
            },
        )

    async def _queue(self, body: QueueTasks) -> Response:
        store = self._store()
        if store is None:
            return JSONResponse(_NOT_RUNNING, status_code=503)
        unknown = [
            {
                "type": "unknown_resources",
                "loc": ("tasks", i, "resources_id"),
                "msg": f"no resources published as {rid!r}",
            }
            for i, rid in enumerate(task.resources_id for task in body.tasks)
            if rid is not None and await store.get_resources_by_id(rid) is None
        ]
        if unknown:  # resources are never removed: what is published now still is once the tasks are queued
            return unprocessable(unknown, prefix=("body",))

        async def queue() -> Response:
            rollout_ids: list[str] = []
            for task in body.tasks:
                rollout_id = await store.add_task(
                    task.sample, mode=task.mode, resources_id=task.resources_id, metadata=task.metadata
                )
                rollout_ids.append(rollout_id)
            return _object(rollout_ids=_dumps(rollout_ids))

        return await self._replays.once(store, "/tasks", body.request_id, queue)

    async def _cancel(self, body: CancelTasks) -> Response:
        store = self._store()
        if store is None:
            return JSONResponse(_NOT_RUNNING, status_code=503)

        async def cancel() -> Response:
            return _object(cancelled=_dumps(store.cancel(body.rollout_ids)))

        return await self._replays.once(store, "/tasks/cancel", body.request_id, cancel)

    async def _publish(self, body: PublishResources) -> Response:
        store = self._store()
        if store is None:
            return JSONResponse(_NOT_RUNNING, status_code=503)

        async def publish() -> Response:
            resources_id = await self._server.update_resources(body.resources)
            return _object(resources_id=_dumps(resources_id))

        return await self._replays.once(store, "/resources", body.request_id, publish)

    async def _take(self, body: TakeRollouts) -> Response:
        store = self._store()
        if store is None:
            return JSONResponse(_NOT_RUNNING, status_code=503)

        async def take() -> Response:
            if body.rollout_ids is None:
                taken = await store.retrieve_completed_rollouts()
            else:
                taken = [r for rid in dict.fromkeys(body.rollout_ids) if (r := await store.retrieve_rollout(rid))]
            return _object(rollouts=_rollouts_json(taken))

        return await self._replays.once(store, "/rollouts/take", body.request_id, take)

    async def _wait(self, body: WaitForRollouts) -> Response:
        store = self._store()
        if store is None:
            return JSONResponse(_NOT_RUNNING, status_code=503)
        rollout_ids = list(dict.fromkeys(body.rollout_ids))
        unknown = [rid for rid in rollout_ids if status_of(store, rid) is None]
        if unknown:
            detail = f"{len(unknown)} rollout id(s) the server neither holds nor remembers, e.g. {unknown[0]!r}"
            return JSONResponse({"detail": detail, "unknown": unknown}, status_code=404)
        cap = self._server.options.max_poll_wait
        held = 0.0 if self._waits.closing(store) else min(cap if body.timeout is None else body.timeout, cap)
        if held > 0 and store.unfinished(rollout_ids):
            # wait_for_rollouts reads what is unfinished when it starts, and registers before it yields:
            # no result stored in between or later is missed.
            try:
                await self._waits.hold(self._server.wait_for_rollouts(rollout_ids, held))
            except ServerNotRunning:  # stopped while held
                return JSONResponse(_NOT_RUNNING, status_code=503)
            except ValueError:  # a finished task forgotten meanwhile (max_remembered): nothing to wait for
                pass
        # No await from here: what is stored and what is pending are read together.
        pending = [rid for rid in rollout_ids if status_of(store, rid) == "pending"]
        return _object(rollouts=_rollouts_json(store.stored(rollout_ids)), pending=_dumps(pending), held=_dumps(held))

    async def _read(self, rollout_id: str) -> Response:
        store = self._store()
        if store is None:
            return JSONResponse(_NOT_RUNNING, status_code=503)
        status = status_of(store, rollout_id)
        if status is None:
            detail = f"Rollout ID '{rollout_id}' is neither live, stored nor remembered."
            return JSONResponse({"detail": detail}, status_code=404)
        stored = store.stored((rollout_id,))
        rollout = stored[0].model_dump_json().encode() if stored else b"null"
        return _object(rollout_id=_dumps(rollout_id), status=_dumps(status), rollout=rollout)
