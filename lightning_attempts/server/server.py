"""AttemptAwareServer: upstream's legacy server with attempt-checked ``/task`` and ``/rollout``.

It subclasses ``AgentLightningServer`` (same constructor arguments and lifecycle) and ties
the parts beside it together: its options (``lightning_attempts.options``); the store of each run, built when
upstream's lifespan assigns one, with what waits on it wired to its hooks (polls.py,
deadlines.py, completions.py) and the watch of the fleet as a whole (fleet.py); the routes answering from that
store (routes.py); and uvicorn (lifecycle.py). It keeps the operations of its own API: counters, a task's
history, cancelling, and waiting for results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from typing_extensions import Unpack

from ..compat import AgentLightningServer, LegacyRollout, ServerDataStore
from ..dashboard import DashboardRoutes, ProxyReadout, StepLog
from ..errors import ServerNotRunning, ServerStartError, ServerStopped
from ..hosts import client_url
from ..options import DEFAULTS, Options, ServerArguments, option_attributes
from ..store import AttemptAwareDataStore
from .completions import Completions
from .deadlines import DeadlineTimer
from .fleet import Asks, FleetWatch, idle_stats, watch_fleet
from .lifecycle import Serving, warn_if_open
from .polls import ParkedPolls
from .producer_routes import ProducerRoutes
from .routes import Routes

logger = logging.getLogger(__package__)  # "lightning_attempts.server"

SERVER_STOPPED = "server_stopped"
"""``liveness`` between runs: no result can be stored."""


@option_attributes(
    hidden=("task_timeout_seconds", "api_key", "clock"), settable=("rewrite_loopback_endpoints",), document=True
)
class AttemptAwareServer(AgentLightningServer):
    """Drop-in ``AgentLightningServer`` that stores only a valid attempt's result.

    Same constructor arguments and lifecycle as upstream. Its own options are keyword-only;
    each is a field of ``lightning_attempts.options.Options`` (listed below with its default),
    kept checked in ``server.options`` (``OptionError`` names a bad one when the server is
    built) and, but ``api_key`` and ``clock``, readable as an attribute (``server.max_claims``).
    Leases (``unresponsive_seconds``) apply only to claims whose workers heartbeat: a worker
    that never does (an old client) keeps its claim until ``task_timeout_seconds``, the hard
    limit on every claim's age. Servers built by the switch, ``install()``, verl's daemon and
    ``serve`` take their defaults from the environment (``lightning_attempts.switch.variables``).

    ``GET /task?wait=S`` is a long poll: held until a task can be claimed for it or S
    seconds pass; parked polls are served first come, first served, and one whose
    client disconnected takes nothing. Without ``wait``, ``/task`` answers at once, as
    upstream's does. Expired claims are requeued at their deadline by a timer, not
    only when someone polls. ``wait_for_rollouts`` and ``poll_completed_rollout``
    return as soon as the results are stored.

    ``port=0`` binds a free port; ``port`` and ``endpoint`` hold the real one after ``start()``. ``endpoint``
    is a URL a client on this machine can use: bound to ``0.0.0.0`` (every interface), it names ``127.0.0.1``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        task_timeout_seconds: float = DEFAULTS.task_timeout_seconds,
        **options: Unpack[ServerArguments],
    ) -> None:
        self.options = Options(task_timeout_seconds=task_timeout_seconds, **options)
        """The options, checked."""
        self._attempt_store: AttemptAwareDataStore | None = None
        self._polls: ParkedPolls | None = None
        self._deadlines: DeadlineTimer | None = None
        self._completions: Completions | None = None
        self._finish_listeners: list[Callable[[str], None]] = []
        self._fleet: FleetWatch | None = None
        self._routes = Routes(
            self.options,
            is_failed_result=self.is_failed_result,
            stats=self.attempt_stats,
            history=self.attempt_history,
            rewrite_endpoints=lambda: self.options.rewrite_loopback_endpoints is True,
            llm_proxy_port=lambda: self.llm_proxy_port,
            llm_proxy_stats=lambda: None if self.llm_proxy_readout is None else self.llm_proxy_readout.stats(),
        )
        self._producer_routes = ProducerRoutes(self)  # a trainer in another process: queue, publish, take, wait
        self._dashboard = DashboardRoutes(self)
        self.steps = StepLog()
        """The last steps' ``attempts/*`` figures (verl's daemon adds them), for the dashboard's chart."""
        self.llm_proxy_readout: ProxyReadout | None = None
        """The attempt-aware LLM proxy serving beside this server, if any (verl's daemon sets it): the dashboard and
        ``/metrics`` show its figures."""
        self.llm_proxy_port: int | None = None
        """The port of an attempt-aware LLM proxy serving beside this server (verl's daemon sets it): the tasks
        handed out say so (``AttemptTask.llm_proxy_port``), and shim workers call it attempt by attempt."""
        super().__init__(host=host, port=port, task_timeout_seconds=task_timeout_seconds)
        self.endpoint = client_url(host, port)
        """The URL a client on this machine reaches the server by (``0.0.0.0`` bound: ``http://127.0.0.1:PORT``)."""
        self._serving = Serving(self._uvicorn_config, self._answer_parked_polls)
        self._uvicorn_server = self._serving.uvicorn

    # Upstream's lifespan builds a plain ServerDataStore() itself; assigning it here
    # swaps in ours before its startup_event is set, so no caller ever sees the other.
    @property
    def _store(self) -> AttemptAwareDataStore | None:
        return self._attempt_store

    @_store.setter
    def _store(self, store: ServerDataStore | None) -> None:  # pyright: ignore[reportIncompatibleVariableOverride]
        if store is not None and not isinstance(store, AttemptAwareDataStore):
            store = self.create_store()
        self._detach()
        self._attempt_store = store
        if store is not None:
            self._attach(store)

    def _attach(self, store: AttemptAwareDataStore) -> None:
        """Wire the store's hooks to what waits on it: parked polls, the deadline timer, completions."""
        self._polls = ParkedPolls(store)
        self._completions = Completions()
        asks = Asks(self.options.clock)
        self._routes.use(store, self._polls, asks)
        store.on_claimable = self._polls.claimable
        store.on_finished = self._finished
        with contextlib.suppress(RuntimeError):  # no running loop: requeues happen on /task only, and no fleet watch
            loop = asyncio.get_running_loop()
            self._deadlines = DeadlineTimer(store, self.options.clock, loop)
            store.on_deadline = self._deadlines.deadline_added
            self._deadlines.arm()
            self._fleet = watch_fleet(store, self._polls, asks, self.options.clock, loop)

    def _detach(self) -> None:
        self._answer_parked_polls()
        if self._deadlines is not None:
            self._deadlines.stop()
        if self._fleet is not None:
            self._fleet.stop()
        if self._completions is not None:  # waits on a store that is going away end, raising
            self._completions.close(ServerStopped())
        self._polls = self._deadlines = self._completions = self._fleet = None
        self._routes.use(None, None)

    def _answer_parked_polls(self) -> None:
        """Shutdown begins: answer parked long polls and held waits now rather than when their wait ends."""
        if self._polls is not None:
            self._polls.close()
        self._producer_routes.close()

    def create_store(self) -> AttemptAwareDataStore:
        """The store a fresh server run uses; override to customise it."""
        return AttemptAwareDataStore(self.options)

    @property
    def fleet(self) -> FleetWatch | None:
        """The running server's fleet watch (``fleet.FleetWatch``: stalls), on its event loop; None between runs."""
        return self._fleet

    @property
    def running_store(self) -> AttemptAwareDataStore | None:
        """The running server's store; None between runs."""
        return self._attempt_store

    @property
    def store(self) -> AttemptAwareDataStore:
        """The running server's store."""
        if self._attempt_store is None:
            raise ServerNotRunning()
        return self._attempt_store

    # -- routes ---------------------------------------------------------------

    def _setup_routes(self) -> None:
        super()._setup_routes()
        self._routes.install(self._app)
        self._dashboard.install(self._app)
        if self.options.producer_api:  # a trainer in another process (serve): not on a server a trainer owns
            self._producer_routes.install(self._app)

    @property
    def requires_key(self) -> bool:
        """Whether requests must carry the ``api_key``."""
        return self.options.api_key is not None

    async def _check_and_requeue_stale_tasks(self) -> None:
        if self._attempt_store is not None:
            self._attempt_store.requeue_expired()

    def is_failed_result(self, rollout: LegacyRollout) -> bool:
        """Whether a submitted result is a failure, to be retried under ``retry_failed``.

        By default: the worker said so (``AttemptRollout.failure``), or the result has
        no reward and no triplets, which is what every supported release's runner posts
        after the agent raised. An agent that legitimately returns neither looks the
        same: override this (e.g. to read your own ``metadata``), calling ``super()``
        to keep the default. Called once per ``POST /rollout`` while ``retry_failed``
        is set, on the server's event loop: keep it cheap and never block.
        """
        if getattr(rollout, "failure", None) is not None:
            return True
        return rollout.final_reward is None and not rollout.triplets

    # -- lifecycle ------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Start serving in the background; return once the port is bound.

        Unlike upstream, which sleeps one second and carries on whatever happened,
        this raises ``ServerStartError`` when the server cannot start. The port is bound
        first: a port in use raises before anything is logged.
        """
        self.port = self._serving.bind(self.host, self.port)  # the free port found for port=0
        self.endpoint = client_url(self.host, self.port)
        logger.info("Starting server at %s", self.endpoint)
        warn_if_open(self.host, self.port, self.options.api_key)
        if not self._routes.metrics_available:
            logger.info("/metrics answers 404: prometheus-client is missing (the lightning-attempts[metrics] extra)")
        if not await self._serving.start(timeout, endpoint=self.endpoint, address=f"{self.host}:{self.port}"):
            await self.stop()
            raise ServerStartError(f"Server at {self.endpoint} did not start within {timeout}s.")

    async def run_forever(self) -> None:
        """Serve until stopped (upstream's blocking alternative to ``start()``)."""
        warn_if_open(self.host, self.port, self.options.api_key)
        await super().run_forever()

    async def wait_stopped(self) -> None:
        """Wait until the server started by ``start()`` stops (``stop()``, SIGINT or SIGTERM)."""
        await self._serving.wait_stopped()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and wait until the server has shut down (no fixed sleep); answer parked polls."""
        self._answer_parked_polls()
        if not await self._serving.stop(timeout):
            await super().stop()

    # -- operations -----------------------------------------------------------

    def attempt_stats(self) -> dict[str, Any]:
        """Counters by outcome and drop reason, as served at ``GET /attempts/stats``; the parked long polls; and the
        fleet watch's ``stall_*`` (tasks waiting while no worker asks for one)."""
        fleet = idle_stats() if self._fleet is None else self._fleet.stats()
        return {**self.store.stats(), "polls_parked": len(self._polls or ()), **fleet}

    def attempt_history(self, rollout_id: str) -> list[dict[str, Any]] | None:
        """Each claim of a task (attempt id, times, outcome), as served at ``GET /attempts/{rollout_id}``.

        Kept while the task is live and, once finished, as long as it is remembered
        (``max_remembered``); ``None`` for a task neither live nor remembered.
        """
        return self.store.history(rollout_id)

    def liveness(self, rollout_id: str, attempt_id: str) -> str | None:
        """The store's ``liveness``: None while a result of the attempt would be stored now, else why not
        (``server_stopped`` between runs, when nothing can be stored). Call it on the server's loop."""
        store = self._attempt_store
        return SERVER_STOPPED if store is None else store.liveness(rollout_id, attempt_id)

    def on_task_finished(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(rollout_id)`` each time a task's result is stored or the task is cancelled.

        It is called inside the store's state change, on the server's loop: like the store's own hooks, it must
        neither await nor call back into the store (``lightning-attempts serve``'s LLM proxy forgets the task's
        recorded calls there)."""
        self._finish_listeners.append(listener)

    def _finished(self, rollout_id: str) -> None:
        """The store's ``on_finished`` hook: wake the waits on the task, then tell the listeners."""
        if self._completions is not None:
            self._completions.finished(rollout_id)
        for listener in self._finish_listeners:
            try:
                listener(rollout_id)
            except Exception:  # the store's state change must not fail for what listens to it
                logger.exception("A listener of finished tasks failed on %s", rollout_id)

    def stop_with_server(self, stop: Callable[[], Awaitable[object]]) -> None:
        """Await ``stop()`` on the server's loop whenever it has shut down (``stop()``, a signal, the end of
        ``run_forever``): for what serves beside it, such as verl's daemon's LLM proxy."""
        self._serving.stop_with(stop)

    async def cancel_pending(self) -> list[str]:
        """Cancel every queued and claimed task (a batch fence); return their rollout ids."""
        return self.store.cancel()

    # -- completion -----------------------------------------------------------

    async def wait_for_rollouts(self, rollout_ids: Iterable[str], timeout: float | None = None) -> list[LegacyRollout]:
        """The stored results among ``rollout_ids``, once every one of them is finished or ``timeout`` passes.

        LightningStore's name and shape: ``timeout=None`` waits as long as it takes; a
        task is finished when its result is stored or it is cancelled; an id the server
        neither holds nor remembers raises ``ValueError``. It returns as soon as the last
        result is stored (no polling), and does not take the results:
        ``retrieve_completed_rollouts()`` still returns them. It raises ``ServerNotRunning``
        (a ``RuntimeError``) when the server is not running or stops while it waits.
        """
        rollout_ids = list(rollout_ids)
        store, completions = self.store, self._completions
        if completions is not None:
            await completions.wait(store.unfinished(rollout_ids), timeout)
        return store.stored(rollout_ids)

    async def poll_completed_rollout(self, rollout_id: str, timeout: float | None = None) -> LegacyRollout | None:
        """Upstream's: take the rollout once it is stored, or None after ``timeout`` (falsy: no limit).

        It returns as soon as the result is stored, where upstream checks every second, and
        raises ``ServerStopped`` (a ``RuntimeError``) when the server stops while it waits (upstream's does
        within a second).
        """
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            rollout = await self.get_completed_rollout(rollout_id)
            if rollout is not None:
                return rollout
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            # No await since the check: a result stored from here on ends the wait.
            completions = self._completions
            if completions is None:
                raise ServerNotRunning()
            await completions.wait((rollout_id,), remaining)
