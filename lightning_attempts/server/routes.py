"""The HTTP API: attempt-checked ``/task`` and ``/rollout``; ``/heartbeat``, ``/release``, ``/attempts``, ``/metrics``.

``Routes.install`` replaces upstream's ``GET /task`` and ``POST /rollout`` on the server's
FastAPI app, and its resources routes (answering as upstream's, or with LLM endpoints a
worker on another host can reach: ``rewrite_loopback_endpoints``), and adds the routes of
its own. Each route answers from the store the server gives it (``use``) for the run in
progress, or 503 between runs. The hot routes are served by ``DirectRoute`` (direct_route.py)
and read nothing per request but that store, its parked polls and the options captured here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..auth import ApiKeyMiddleware
from ..compat import LegacyRollout, ResourcesUpdate
from ..endpoints import reachable_resources
from ..models import MAX_ID_LENGTH, WAIT_HEADER, AttemptRollout, AttemptTask, AttemptTaskIfAny, Heartbeat, Release
from ..options import Options
from ..store import AttemptAwareDataStore, excerpt
from .direct_route import DirectRoute, unprocessable
from .fleet import Asks
from .metrics import exposition
from .polls import ParkedPolls

logger = logging.getLogger(__package__)  # "lightning_attempts.server"


_NO_TASK = b'{"is_available":false,"task":null}'
_WAIT_PARAMETER: dict[str, Any] = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "minimum": 0},
    "description": "Long poll: hold the request until a task can be claimed or this many seconds pass "
    "(capped by the server's `max_poll_wait`). Answers carry `X-Lightning-Attempts-Wait`.",
}
_HEARTBEATS_PARAMETER: dict[str, Any] = {
    "name": "heartbeats",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": "The worker heartbeats its claims (`POST /heartbeat`): the claim is leased from the start, and "
    "requeued after the server's `unresponsive_seconds` of silence. A claim that is not leased (a worker that "
    "never heartbeats) is requeued only at `task_timeout_seconds`, until its first heartbeat leases it.",
}
_WORKER_PARAMETER: dict[str, Any] = {
    "name": "worker",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "maxLength": MAX_ID_LENGTH},
    "description": "Who claims (the shim sends `host:pid`): the claim's history and the dashboard show "
    "`<worker> at <address>`; without it, the address alone.",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_REPLACED_ROUTES = {
    ("/task", "GET"),
    ("/rollout", "POST"),
    ("/resources/latest", "GET"),
    ("/resources/{resource_id}", "GET"),
}
_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": "The body is larger than the server's `max_body_bytes`"}
}


def _worker(request: Request, name: str | None) -> str:
    """Who sent ``request``: ``<name> at <address>`` when its worker named itself, else its address."""
    address = request.client.host if request.client is not None else "an unknown address"
    return f"{name} at {address}" if name else address


def _seconds(raw: str) -> float | None:
    """A ``wait`` parameter as seconds; None unless a finite, non-negative number."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _task_answer(task: AttemptTask | None, held: float | None, llm_proxy_port: int | None = None) -> Response:
    if task is not None and llm_proxy_port is not None:
        task.llm_proxy_port = llm_proxy_port
    body = _NO_TASK if task is None else b'{"is_available":true,"task":' + task.model_dump_json().encode() + b"}"
    headers = None if held is None else {WAIT_HEADER: format(held, "g")}
    return Response(body, media_type="application/json", headers=headers)


class Routes:
    """The routes of one ``AttemptAwareServer``, answering from the store of its current run.

    ``is_failed_result``, ``stats`` and ``history`` are the server's methods of those
    names (``attempt_stats``, ``attempt_history``), overrides included; ``rewrite_endpoints``
    says, per request, whether served LLM endpoints are made reachable (the option can be
    turned on while serving); ``llm_proxy_port``, the port of the attempt-aware LLM proxy the
    tasks handed out name (``AttemptTask.llm_proxy_port``), if any; ``llm_proxy_stats``, that proxy's ``stats()``
    (None: no proxy), for ``/metrics``.
    """

    def __init__(
        self,
        options: Options,
        *,
        is_failed_result: Callable[[LegacyRollout], bool],
        stats: Callable[[], dict[str, Any]],
        history: Callable[[str], list[dict[str, Any]] | None],
        rewrite_endpoints: Callable[[], bool] = lambda: False,
        llm_proxy_port: Callable[[], int | None] = lambda: None,
        llm_proxy_stats: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self._options = options
        self._max_poll_wait = options.max_poll_wait  # read per request: an attribute of this object's own
        self._retry_failed = options.retry_failed
        self._is_failed_result = is_failed_result
        self._stats = stats
        self._history = history
        self._rewrite_endpoints = rewrite_endpoints
        self._llm_proxy_port = llm_proxy_port
        self._llm_proxy_stats = llm_proxy_stats
        self._store: AttemptAwareDataStore | None = None
        self._polls: ParkedPolls | None = None
        self._asks: Asks | None = None
        self.metrics_available = False
        """Whether ``/metrics`` serves Prometheus' format (prometheus-client installed); set by ``install``."""

    def use(self, store: AttemptAwareDataStore | None, polls: ParkedPolls | None, asks: Asks | None = None) -> None:
        """Answer from ``store`` and its parked ``polls`` from now on, noting each ``GET /task`` in ``asks``; None: no
        run in progress (503)."""
        self._store, self._polls, self._asks = store, polls, asks

    def install(self, app: FastAPI) -> None:
        """Replace upstream's ``GET /task``, ``POST /rollout`` and resources routes; add ours and the key check."""
        router = app.router
        router.routes = [
            route
            for route in router.routes
            if not (isinstance(route, APIRoute) and {(route.path, m) for m in route.methods or ()} & _REPLACED_ROUTES)
        ]
        direct = DirectRoute.limited(self._options.max_body_bytes)
        router.add_api_route(
            "/task",
            self._next_task,
            methods=["GET"],
            response_model=AttemptTaskIfAny,
            summary="Claim the next task as a new attempt",
            route_class_override=direct,
            openapi_extra={"parameters": [_WAIT_PARAMETER, _HEARTBEATS_PARAMETER, _WORKER_PARAMETER]},
            responses={
                422: {
                    "description": "`wait` is not a non-negative number of seconds, `heartbeats` not a boolean, "
                    "or `worker` longer than 256 characters"
                }
            },
        )
        router.add_api_route(
            "/rollout",
            self._post_rollout,
            methods=["POST"],
            summary="Submit the result of an attempt",
            route_class_override=direct,
            responses={
                200: {"description": "Stored (`ok`), or a retry of the stored attempt (`duplicate`)"},
                400: {"description": "Refused: no `attempt_id` and the server requires one"},
                409: {"description": "Dropped: the attempt may not complete the task (see `reason`)"},
                **_TOO_LARGE,
            },
        )
        router.add_api_route(
            "/heartbeat",
            self._post_heartbeat,
            methods=["POST"],
            summary="Tell the server an attempt is still working on its claim",
            route_class_override=direct,
            responses={
                409: {"description": "The attempt no longer holds the claim (see `reason`): stop working"},
                **_TOO_LARGE,
            },
        )
        router.add_api_route(
            "/release",
            self._post_release,
            methods=["POST"],
            summary="Give an attempt's claim back without a result: the task is requeued at once",
            route_class_override=direct,
            responses={
                409: {"description": "The attempt no longer holds the claim (see `reason`): nothing changed"},
                **_TOO_LARGE,
            },
        )
        # Upstream's, answering the same; with rewrite_loopback_endpoints, LLM endpoints the worker can reach.
        router.add_api_route(
            "/resources/latest",
            self._latest_resources,
            methods=["GET"],
            response_model=ResourcesUpdate,
            summary="The most recent resources",
        )
        router.add_api_route(
            "/resources/{resource_id}",
            self._resources_by_id,
            methods=["GET"],
            response_model=ResourcesUpdate,
            summary="A version of the resources",
        )
        app.add_exception_handler(RequestValidationError, self._validation_error)
        app.add_api_route("/attempts/stats", self._attempt_stats_route, methods=["GET"], summary="Attempt counters")
        render_metrics = exposition(self._stats, self._llm_proxy_stats)
        self.metrics_available = render_metrics is not None
        if render_metrics is not None:
            app.add_api_route(
                "/metrics", self._metrics_route(render_metrics), methods=["GET"], summary="Prometheus metrics"
            )
        else:  # a bare 404 would not say why
            app.add_api_route(
                "/metrics",
                self._metrics_missing,
                methods=["GET"],
                summary="Prometheus metrics: 404 without the metrics extra",
                responses={404: {"description": "prometheus-client is not installed"}},
            )
        # After /attempts/stats: the first route that matches a path wins.
        app.add_api_route(
            "/attempts/{rollout_id}", self._attempt_history_route, methods=["GET"], summary="A task's claims"
        )
        api_key = self._options.api_key
        if api_key is not None:  # around the whole app: routes added later are covered too
            app.add_middleware(ApiKeyMiddleware, key=api_key, on_refused=self._count_unauthorized)

    def _count_unauthorized(self) -> None:
        if self._store is not None:
            self._store.count_unauthorized()

    @staticmethod
    async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return unprocessable(exc.errors())

    async def _next_task(self, request: Request) -> Response:
        wait: float | None = None
        leased = False
        name: str | None = None
        if request.scope.get("query_string"):
            query = request.query_params
            raw = query.get("wait")
            if raw is not None and (wait := _seconds(raw)) is None:
                error = {"type": "wait", "loc": ("query", "wait"), "msg": "wait must be a number of seconds, 0 or more"}
                return unprocessable([error])
            raw = query.get("heartbeats", "0").lower()
            if raw not in _TRUE and raw not in _FALSE:
                error = {"type": "heartbeats", "loc": ("query", "heartbeats"), "msg": "heartbeats must be a boolean"}
                return unprocessable([error])
            leased = raw in _TRUE
            name = query.get("worker") or None
            if name is not None and len(name) > MAX_ID_LENGTH:
                error = {
                    "type": "worker",
                    "loc": ("query", "worker"),
                    "msg": f"worker is {MAX_ID_LENGTH} characters at most",
                }
                return unprocessable([error])
        worker = _worker(request, name)
        store, polls, asks = self._store, self._polls, self._asks
        if store is None or polls is None:
            return _task_answer(None, None if wait is None else 0.0)
        if asks is not None:
            asks.record()
        store.requeue_expired()
        if wait is None:  # upstream's /task
            return _task_answer(store.claim(leased=leased, worker=worker), None, self._llm_proxy_port())
        held = 0.0 if polls.closing else min(wait, self._max_poll_wait)
        # Polls parked earlier come first: they get the queued tasks being handed out.
        task = store.claim(leased=leased, worker=worker) if held == 0 or not polls else None
        if task is None and held > 0:
            task = await polls.wait(request.receive, held, leased=leased, worker=worker)
            if asks is not None:  # it asked all the while it was parked
                asks.record()
            if task is None and polls.closing:
                held = 0.0  # answered early: the server is stopping
        return _task_answer(task, held, self._llm_proxy_port())

    async def _post_rollout(self, payload: AttemptRollout) -> JSONResponse:
        store = self._store
        if store is None:
            return JSONResponse({"detail": "Server not fully initialized."}, status_code=503)
        if self._retry_failed:
            submission = store.submit(payload, payload.attempt_id, failed=self._is_failed_result(payload))
        else:
            if payload.failure is not None:
                logger.info(
                    "Attempt %s of %s says it failed (stored: retry_failed is 0): %r",
                    payload.attempt_id,
                    payload.rollout_id,
                    excerpt(payload.failure),
                )
            submission = store.submit(payload, payload.attempt_id)
        return JSONResponse(submission.to_json(), status_code=submission.http_status)

    async def _latest_resources(self, request: Request) -> Any:
        store = self._store
        if store is None:
            raise HTTPException(status_code=503, detail="Server not fully initialized.")
        update = await store.get_latest_resources()
        if not update:
            raise HTTPException(status_code=404, detail="No resources have been set on the server.")
        return self._served(update, request)

    async def _resources_by_id(self, resource_id: str, request: Request) -> Any:
        store = self._store
        if store is None:
            raise HTTPException(status_code=503, detail="Server not fully initialized.")
        update = await store.get_resources_by_id(resource_id)
        if not update:
            raise HTTPException(status_code=404, detail=f"Resource ID '{resource_id}' not found.")
        return self._served(update, request)

    def _served(self, update: ResourcesUpdate, request: Request) -> Any:
        """The update as stored or, with ``rewrite_loopback_endpoints``, a copy with reachable LLM endpoints."""
        if not self._rewrite_endpoints():
            return update
        return JSONResponse(reachable_resources(update.model_dump(mode="json"), request.headers.get("host")))

    async def _post_heartbeat(self, heartbeat: Heartbeat) -> JSONResponse:
        store = self._store
        if store is None:
            return JSONResponse({"detail": "Server not fully initialized."}, status_code=503)
        lease = store.heartbeat(heartbeat.rollout_id, heartbeat.attempt_id)
        return JSONResponse(lease.to_json(), status_code=200 if lease.current else 409)

    async def _post_release(self, release: Release, request: Request) -> JSONResponse:
        store = self._store
        if store is None:
            return JSONResponse({"detail": "Server not fully initialized."}, status_code=503)
        worker = _worker(request, release.worker)
        answer = store.release(release.rollout_id, release.attempt_id, release.reason, worker)
        return JSONResponse(answer.to_json(), status_code=200 if answer.released else 409)

    def _metrics_route(self, render: Callable[[], tuple[bytes, str]]) -> Callable[[], Awaitable[Response]]:
        async def metrics() -> Response:
            if self._store is None:
                return JSONResponse({"detail": "Server not fully initialized."}, status_code=503)
            body, content_type = render()
            return Response(body, media_type=content_type)

        return metrics

    @staticmethod
    async def _metrics_missing() -> JSONResponse:
        detail = (
            "Prometheus metrics are off: prometheus-client is not installed. Install it into the server's "
            "environment, pip install 'lightning-attempts[metrics]' (or pip install prometheus-client), and "
            "restart the server."
        )
        return JSONResponse({"detail": detail}, status_code=404)

    async def _attempt_stats_route(self) -> dict[str, Any]:
        return self._stats()

    async def _attempt_history_route(self, rollout_id: str) -> list[dict[str, Any]]:
        history = self._history(rollout_id)
        if history is None:
            raise HTTPException(status_code=404, detail=f"Rollout ID '{rollout_id}' is neither live nor remembered.")
        return history
