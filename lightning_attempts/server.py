"""AttemptAwareServer: upstream's legacy server with attempt-checked ``/task`` and ``/rollout``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .compat import AgentLightningServer, ServerDataStore
from .models import AttemptRollout, AttemptTaskIfAny
from .outcomes import STALE_POLICIES, StalePolicy
from .store import DEFAULT_MAX_REMEMBERED, AttemptAwareDataStore, Clock

logger = logging.getLogger(__name__)

_NO_TASK = b'{"is_available":false,"task":null}'
_REPLACED_ROUTES = {("/task", "GET"), ("/rollout", "POST")}


class ServerStartError(RuntimeError):
    """The server could not start, e.g. because its port is in use."""


class AttemptAwareServer(AgentLightningServer):
    """Drop-in ``AgentLightningServer`` that stores only a valid attempt's result.

    Same constructor arguments and lifecycle as upstream. Keyword-only options:

    - ``stale_policy``: ``"reject"`` (default) drops a result whose attempt was
      superseded; ``"salvage"`` stores it if the task has no result yet.
    - ``require_attempt_id``: refuse (400) results that carry no attempt id.
    - ``max_remembered``: how many finished tasks are remembered to answer late
      results with ``duplicate`` or ``already_completed``; a late result of a task
      forgotten since is dropped as ``unknown_rollout``.
    - ``clock``: monotonic clock for claim deadlines (injectable for tests).

    ``port=0`` binds a free port; ``port`` and ``endpoint`` hold the real one after ``start()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        task_timeout_seconds: float = 300.0,
        *,
        stale_policy: StalePolicy = "reject",
        require_attempt_id: bool = False,
        max_remembered: int = DEFAULT_MAX_REMEMBERED,
        clock: Clock = time.monotonic,
    ) -> None:
        if stale_policy not in STALE_POLICIES:
            raise ValueError(f"stale_policy must be one of {STALE_POLICIES}, not {stale_policy!r}")
        self.stale_policy: StalePolicy = stale_policy
        self.require_attempt_id = require_attempt_id
        self.max_remembered = max_remembered
        self._clock = clock
        self._attempt_store: AttemptAwareDataStore | None = None
        self._serving: asyncio.Task[None] | None = None
        super().__init__(host=host, port=port, task_timeout_seconds=task_timeout_seconds)

    # Upstream's lifespan builds a plain ServerDataStore() itself; assigning it here
    # swaps in ours before its startup_event is set, so no caller ever sees the other.
    @property
    def _store(self) -> AttemptAwareDataStore | None:
        return self._attempt_store

    @_store.setter
    def _store(self, store: ServerDataStore | None) -> None:  # pyright: ignore[reportIncompatibleVariableOverride]
        if store is not None and not isinstance(store, AttemptAwareDataStore):
            store = self.create_store()
        self._attempt_store = store

    def create_store(self) -> AttemptAwareDataStore:
        """The store a fresh server run uses; override to customise it."""
        return AttemptAwareDataStore(
            task_timeout_seconds=self._task_timeout_seconds,
            stale_policy=self.stale_policy,
            require_attempt_id=self.require_attempt_id,
            max_remembered=self.max_remembered,
            clock=self._clock,
        )

    @property
    def store(self) -> AttemptAwareDataStore:
        """The running server's store."""
        if self._attempt_store is None:
            raise RuntimeError("Store not initialized. The server may not be running.")
        return self._attempt_store

    # -- routes ---------------------------------------------------------------

    def _setup_routes(self) -> None:
        super()._setup_routes()
        router = self._app.router
        router.routes = [
            route
            for route in router.routes
            if not (isinstance(route, APIRoute) and {(route.path, m) for m in route.methods or ()} & _REPLACED_ROUTES)
        ]
        self._app.add_api_route(
            "/task",
            self._next_task,
            methods=["GET"],
            response_model=AttemptTaskIfAny,
            summary="Claim the next task as a new attempt",
        )
        self._app.add_api_route(
            "/rollout",
            self._post_rollout,
            methods=["POST"],
            summary="Submit the result of an attempt",
            responses={
                200: {"description": "Stored (`ok`), or a retry of the stored attempt (`duplicate`)"},
                400: {"description": "Refused: no `attempt_id` and the server requires one"},
                409: {"description": "Dropped: the attempt may not complete the task (see `reason`)"},
            },
        )
        self._app.add_exception_handler(RequestValidationError, self._validation_error)
        self._app.add_api_route(
            "/attempts/stats", self._attempt_stats_route, methods=["GET"], summary="Attempt counters"
        )

    @staticmethod
    async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
        """422 naming each bad field, without echoing the input back (it may be huge or private)."""
        assert isinstance(exc, RequestValidationError)
        errors = [{key: error[key] for key in ("type", "loc", "msg") if key in error} for error in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    async def _check_and_requeue_stale_tasks(self) -> None:
        if self._attempt_store is not None:
            self._attempt_store.requeue_expired()

    async def _next_task(self) -> Response:
        store = self._attempt_store
        if store is None:
            return Response(_NO_TASK, media_type="application/json")
        store.requeue_expired()
        task = store.claim()
        if task is None:
            return Response(_NO_TASK, media_type="application/json")
        body = b'{"is_available":true,"task":' + task.model_dump_json().encode() + b"}"
        return Response(body, media_type="application/json")

    async def _post_rollout(self, payload: AttemptRollout) -> JSONResponse:
        store = self._attempt_store
        if store is None:
            return JSONResponse({"detail": "Server not fully initialized."}, status_code=503)
        submission = store.submit(payload, payload.attempt_id)
        return JSONResponse(submission.to_json(), status_code=submission.http_status)

    async def _attempt_stats_route(self) -> dict[str, Any]:
        return self.attempt_stats()

    # -- lifecycle ------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Start serving in the background; return once the port is bound.

        Unlike upstream, which sleeps one second and carries on whatever happened,
        this raises ``ServerStartError`` when the server cannot start.
        """
        logger.info("Starting server at %s", self.endpoint)
        self._serving = asyncio.create_task(self._serve())
        deadline = time.monotonic() + timeout
        while not self._uvicorn_server.started:
            if self._serving.done():
                self._serving.result()  # raises what stopped it
                raise ServerStartError(f"Server at {self.endpoint} stopped before it started.")
            if time.monotonic() > deadline:
                await self.stop()
                raise ServerStartError(f"Server at {self.endpoint} did not start within {timeout}s.")
            await asyncio.sleep(0.005)
        self._adopt_bound_port()

    async def _serve(self) -> None:
        try:
            await self._uvicorn_server.serve()
        except SystemExit as exc:  # uvicorn exits the process when it cannot bind
            raise ServerStartError(
                f"Could not start the server on {self.host}:{self.port} (is the port in use?). "
                "uvicorn's log above says why."
            ) from exc

    def _adopt_bound_port(self) -> None:
        for server in self._uvicorn_server.servers:
            for sock in server.sockets:
                self.port = int(sock.getsockname()[1])
                self.endpoint = f"http://{self.host}:{self.port}"
                return

    async def wait_stopped(self) -> None:
        """Wait until the server started by ``start()`` stops (``stop()``, SIGINT or SIGTERM)."""
        if self._serving is not None:
            await asyncio.shield(self._serving)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and wait until the server has shut down (no fixed sleep)."""
        serving, self._serving = self._serving, None
        if serving is None:
            await super().stop()
            return
        self._uvicorn_server.should_exit = True
        with contextlib.suppress(ServerStartError):
            await asyncio.wait_for(serving, timeout)
        logger.info("Server stopped.")

    # -- operations -----------------------------------------------------------

    def attempt_stats(self) -> dict[str, Any]:
        """Counters by outcome and drop reason, as served at ``GET /attempts/stats``."""
        return self.store.stats()

    async def cancel_pending(self) -> list[str]:
        """Cancel every queued and claimed task (a batch fence); return their rollout ids."""
        return self.store.cancel()
