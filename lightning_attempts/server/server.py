"""AttemptAwareServer: upstream's legacy server with attempt-checked ``/task`` and ``/rollout``.

It subclasses ``AgentLightningServer`` (same constructor arguments and lifecycle) and ties
the parts beside it together: its options (options.py); the store of each run, built when
upstream's lifespan assigns one, with what waits on it wired to its hooks (polls.py,
deadlines.py, completions.py); the routes answering from that store (routes.py); and
uvicorn (lifecycle.py). It keeps the operations of its own API: counters, a task's
history, cancelling, and waiting for results.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

from ..compat import AgentLightningServer, LegacyRollout, ServerDataStore
from ..store import AttemptAwareDataStore, Clock, StalePolicy
from .completions import Completions
from .deadlines import DeadlineTimer
from .lifecycle import ServerStartError, Serving, warn_if_open
from .options import DEFAULTS, ServerOptions
from .polls import ParkedPolls
from .routes import Routes

logger = logging.getLogger(__package__)  # "lightning_attempts.server", as before it became a package


class AttemptAwareServer(AgentLightningServer):
    """Drop-in ``AgentLightningServer`` that stores only a valid attempt's result.

    Same constructor arguments and lifecycle as upstream. Keyword-only options:

    - ``stale_policy``: ``"reject"`` (default) drops a result whose attempt was
      superseded; ``"salvage"`` stores it if the task has no result yet.
    - ``require_attempt_id``: refuse (400) results that carry no attempt id.
    - ``unresponsive_seconds``: the lease. A claim whose worker heartbeats (it said so
      with ``GET /task?heartbeats=1``, or sent a ``POST /heartbeat``) is requeued after
      this long without a word from it; a claim whose worker never heartbeats (an old
      client) is not, and keeps its task until ``task_timeout_seconds``, the hard limit
      on every claim's age. ``None`` (default): no leases, upstream's behaviour; the
      servers the switch, ``install()`` and ``serve`` build default to 60 s
      (``environment.SWITCH_DEFAULTS``).
    - ``max_claims``: when the Nth claim of a task times out, complete the task with an
      empty rollout (``final_reward=None``, ``metadata["lightning_attempts"]`` saying
      why) instead of requeueing it, so a trainer waiting for every task goes on.
      Released claims count as claims.
    - ``retry_failed``: requeue a task whose live attempt posts a *failed result*
      (``is_failed_result``) for another attempt, at most this many times per task
      and never past ``max_claims``; after that the failed result is stored, marked
      ``metadata["lightning_attempts"] = {"outcome": "failed", "claims": n}``.
      0 (default): a failed result is stored as upstream stores it.
    - ``max_remembered``: how many finished tasks are remembered to answer late
      results with ``duplicate`` or ``already_completed``; a late result of a task
      forgotten since is dropped as ``unknown_rollout``.
    - ``max_body_bytes``: larger bodies of ``/rollout`` and ``/heartbeat`` are answered
      413, read no further than the limit (default 64 MiB; ``None``: no limit).
    - ``max_poll_wait``: longest ``GET /task?wait=S`` is held, in seconds (default 20;
      0: answer at once, as upstream does).
    - ``api_key``: every route answers 401 to a request without this key in
      ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (agentlightning 1.0's
      headers; ``AttemptAwareClient`` sends ``AGL_KEY``). ``None`` (default): open, as
      upstream; a server bound beyond loopback then logs a warning at start.
    - ``rewrite_loopback_endpoints``: serve each LLM resource whose ``endpoint`` names a
      loopback host (``127.0.0.1``, ``localhost``, ``::1``) with the host the worker used to
      reach this server (its request's ``Host``), port and path kept, so that a worker on
      another machine reaches an LLM proxy on this one; stored resources are unchanged.
      ``None`` (default): off, but verl's ``AttemptAwareDaemon`` turns it on (its proxy
      listens on ``0.0.0.0``); ``False`` keeps it off there too. Settable while serving.
    - ``clock``: monotonic clock for claim deadlines (injectable for tests).

    ``GET /task?wait=S`` is a long poll: held until a task can be claimed for it or S
    seconds pass; parked polls are served first come, first served, and one whose
    client disconnected takes nothing. Without ``wait``, ``/task`` answers at once, as
    upstream's does. Expired claims are requeued at their deadline by a timer, not
    only when someone polls. ``wait_for_rollouts`` and ``poll_completed_rollout``
    return as soon as the results are stored.

    ``port=0`` binds a free port; ``port`` and ``endpoint`` hold the real one after ``start()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        task_timeout_seconds: float = 300.0,
        *,
        stale_policy: StalePolicy = DEFAULTS.stale_policy,
        require_attempt_id: bool = DEFAULTS.require_attempt_id,
        unresponsive_seconds: float | None = DEFAULTS.unresponsive_seconds,
        max_claims: int | None = DEFAULTS.max_claims,
        retry_failed: int = DEFAULTS.retry_failed,
        max_remembered: int = DEFAULTS.max_remembered,
        max_body_bytes: int | None = DEFAULTS.max_body_bytes,
        max_poll_wait: float = DEFAULTS.max_poll_wait,
        api_key: str | None = DEFAULTS.api_key,
        rewrite_loopback_endpoints: bool | None = DEFAULTS.rewrite_loopback_endpoints,
        clock: Clock = DEFAULTS.clock,
    ) -> None:
        self.options = ServerOptions(
            stale_policy=stale_policy,
            require_attempt_id=require_attempt_id,
            unresponsive_seconds=unresponsive_seconds,
            max_claims=max_claims,
            retry_failed=retry_failed,
            max_remembered=max_remembered,
            max_body_bytes=max_body_bytes,
            max_poll_wait=max_poll_wait,
            api_key=api_key,
            rewrite_loopback_endpoints=rewrite_loopback_endpoints,
            clock=clock,
        )
        """The keyword-only options, checked; each but ``api_key`` and ``clock`` is also an attribute."""
        self._attempt_store: AttemptAwareDataStore | None = None
        self._polls: ParkedPolls | None = None
        self._deadlines: DeadlineTimer | None = None
        self._completions: Completions | None = None
        self._routes = Routes(
            self.options,
            is_failed_result=self.is_failed_result,
            stats=self.attempt_stats,
            history=self.attempt_history,
            rewrite_endpoints=lambda: self.options.rewrite_loopback_endpoints is True,
        )
        super().__init__(host=host, port=port, task_timeout_seconds=task_timeout_seconds)
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
        self._routes.use(store, self._polls)
        store.on_claimable = self._polls.claimable
        store.on_finished = self._completions.finished
        with contextlib.suppress(RuntimeError):  # no running loop: requeues happen on /task only
            self._deadlines = DeadlineTimer(store, self.options.clock, asyncio.get_running_loop())
            store.on_deadline = self._deadlines.deadline_added
            self._deadlines.arm()

    def _detach(self) -> None:
        self._answer_parked_polls()
        if self._deadlines is not None:
            self._deadlines.stop()
        if self._completions is not None:  # waits on a store that is going away end, raising
            self._completions.close(RuntimeError("The server stopped while waiting for rollouts."))
        self._polls = self._deadlines = self._completions = None
        self._routes.use(None, None)

    def _answer_parked_polls(self) -> None:
        """Shutdown begins: answer parked long polls now rather than when their wait ends."""
        if self._polls is not None:
            self._polls.close()

    def create_store(self) -> AttemptAwareDataStore:
        """The store a fresh server run uses; override to customise it."""
        options = self.options
        return AttemptAwareDataStore(
            task_timeout_seconds=self._task_timeout_seconds,
            stale_policy=options.stale_policy,
            require_attempt_id=options.require_attempt_id,
            unresponsive_seconds=options.unresponsive_seconds,
            max_claims=options.max_claims,
            retry_failed=options.retry_failed,
            max_remembered=options.max_remembered,
            clock=options.clock,
        )

    @property
    def store(self) -> AttemptAwareDataStore:
        """The running server's store."""
        if self._attempt_store is None:
            raise RuntimeError("Store not initialized. The server may not be running.")
        return self._attempt_store

    # -- options (read-only: ``options`` holds them) --------------------------

    @property
    def stale_policy(self) -> StalePolicy:
        return self.options.stale_policy

    @property
    def require_attempt_id(self) -> bool:
        return self.options.require_attempt_id

    @property
    def unresponsive_seconds(self) -> float | None:
        return self.options.unresponsive_seconds

    @property
    def max_claims(self) -> int | None:
        return self.options.max_claims

    @property
    def retry_failed(self) -> int:
        return self.options.retry_failed

    @property
    def max_remembered(self) -> int:
        return self.options.max_remembered

    @property
    def max_body_bytes(self) -> int | None:
        return self.options.max_body_bytes

    @property
    def max_poll_wait(self) -> float:
        return self.options.max_poll_wait

    @property
    def rewrite_loopback_endpoints(self) -> bool | None:
        return self.options.rewrite_loopback_endpoints

    @rewrite_loopback_endpoints.setter
    def rewrite_loopback_endpoints(self, on: bool | None) -> None:
        """The one option settable while serving: verl's daemon turns it on for the server it built."""
        self.options = dataclasses.replace(self.options, rewrite_loopback_endpoints=on)

    # -- routes ---------------------------------------------------------------

    def _setup_routes(self) -> None:
        super()._setup_routes()
        self._routes.install(self._app)

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
        self.endpoint = f"http://{self.host}:{self.port}"
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
        """Counters by outcome and drop reason, as served at ``GET /attempts/stats``; and the parked long polls."""
        return {**self.store.stats(), "polls_parked": len(self._polls or ())}

    def attempt_history(self, rollout_id: str) -> list[dict[str, Any]] | None:
        """Each claim of a task (attempt id, times, outcome), as served at ``GET /attempts/{rollout_id}``.

        Kept while the task is live and, once finished, as long as it is remembered
        (``max_remembered``); ``None`` for a task neither live nor remembered.
        """
        return self.store.history(rollout_id)

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
        ``retrieve_completed_rollouts()`` still returns them. It raises ``RuntimeError``
        when the server is not running or stops while it waits.
        """
        rollout_ids = list(rollout_ids)
        store, completions = self.store, self._completions
        if completions is not None:
            await completions.wait(store.unfinished(rollout_ids), timeout)
        return store.stored(rollout_ids)

    async def poll_completed_rollout(self, rollout_id: str, timeout: float | None = None) -> LegacyRollout | None:
        """Upstream's: take the rollout once it is stored, or None after ``timeout`` (falsy: no limit).

        It returns as soon as the result is stored, where upstream checks every second, and
        raises ``RuntimeError`` when the server stops while it waits (upstream's does within a second).
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
                raise RuntimeError("Store not initialized. The server may not be running.")
            await completions.wait((rollout_id,), remaining)
