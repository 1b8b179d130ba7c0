"""``AttemptAwareDaemon``: verl's ``AgentModeDaemon`` (v0, the legacy server) around ``AttemptAwareServer``.

Every method calls upstream's; v1 mode (LightningStore, 0.2+) is upstream's unchanged. In v0:

- the wait for a batch (``run_until_all_finished``) ends when the batch's last result is
  stored (the server's ``wait_for_rollouts``), where upstream checks every 5 seconds; it
  prints upstream's progress line when the count changed, at most every
  ``progress_interval`` seconds, a line when the server finds the fleet stalled (tasks waiting,
  no worker asking for one), and upstream's final line;
- ``get_train_data_batch`` and ``get_test_metrics`` add the step's ``attempts/*`` and
  ``val/attempts/*`` metrics (``step_metrics``); a training step in which no rollout carries
  triplets (every task given up, failed or traced nothing) raises ``NoTrainingData`` saying so,
  where upstream fails inside tensor code;
- ``clear_data_and_server`` also cancels whatever the server still holds of earlier
  batches, so that none of it is claimed in the next;
- no LLM call is left in flight to vLLM when ``clear_data_and_server`` returns (verl's trainer
  puts vLLM to sleep right after): once the batch is done its proxy refuses every call (409
  ``step_ended``) until the next batch is set up; ``get_train_data_batch`` and
  ``get_test_metrics`` wait for the calls in flight, at most ``llm_drain_timeout_seconds``, cut
  those left, and count both in the step's metrics; ``clear_data_and_server`` does the same for
  anything left (``llm_proxy.draining``);
- the LLM endpoint it publishes (``http://127.0.0.1:<proxy port>/v1``) is served to each
  worker with the host the worker reached the server by (the server's
  ``rewrite_loopback_endpoints``, unless set to ``False``), so workers on other machines reach
  its proxy;
- its server is attempt-aware even when the daemon is built directly, without
  ``install()``, and takes its options as under ``install()`` (``switch.variables.resolve``);
- its LLM proxy is ours (``llm_proxy.AttachedProxy``), on upstream's port and ``/v1`` paths: shim
  workers are served an endpoint naming their attempt, whose calls are refused once it is no
  longer live; each attempt stays on one backend; plain ``/v1`` needs the server's key, if it
  has one; a stored result with a reward and no triplets is trained on the token ids of its own
  attempt's calls, and so are a result's triplets without token ids (a streamed call, as the tracer
  records it) (``training_data``); and the step's metrics count the calls;
- its LLM proxy caps or refuses over-long calls (``llm_proxy.context``), with the daemon's
  tokenizer and the limits it learns (``context_limits``).

The server's store is not thread-safe: everything that reads or changes it runs on the
server's event loop, as upstream's daemon runs its own calls.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import ServerNotRunning
from ..llm_proxy import AttachedProxy
from ..llm_proxy.draining import UNWIND_SECONDS
from ..server import AttemptAwareServer
from ..switch.variables import resolve
from . import compat, context_limits
from .step_metrics import TRAIN_PREFIX, VAL_PREFIX, StepTokenIds, StepWindow, stall_line, step_metrics
from .training_data import (
    count_without_token_ids,
    fill_from_calls,
    fill_token_ids,
    lacking_token_ids,
    no_training_data,
    without_triplets,
)

logger = logging.getLogger(__name__)

_UPSTREAM: Any = compat.UpstreamDaemon  # its annotations name verl and torch types, unknown to type checkers here

READ_TIMEOUT = 60.0
"""Seconds a read of the server's state (metrics, a cancellation) may take on its loop."""


class AttemptAwareDaemon(compat.UpstreamDaemon):  # pyright: ignore[reportUntypedBaseClass]
    """verl's ``AgentModeDaemon`` whose batches end on their last result and whose steps log their attempts.

    Same constructor and methods as upstream's; ``install()`` and ``LIGHTNING_ATTEMPTS_INSTALL=1``
    put it wherever agentlightning bound ``AgentModeDaemon``.
    """

    progress_interval: float = 5.0
    """Longest time between two progress lines while the count changes (upstream prints one every 5 s)."""

    @functools.wraps(_UPSTREAM.__init__)  # upstream's signature, for whoever inspects it
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step: StepWindow | None = None
        self._proxy_triplets = 0
        self._token_ids = StepTokenIds()
        self.attempt_proxy: AttachedProxy | None = None
        """Its attempt-aware LLM proxy (v0), once ``start()`` served it."""
        self._cancelled_unreported = 0
        self.cancelled_total = 0
        """Tasks of earlier batches this daemon cancelled before queueing a new one."""
        built: Any = getattr(self, "server", None)  # v0 only
        if compat.legacy_mode(self) and not isinstance(built, AttemptAwareServer):
            # Built directly, without install(): upstream's __init__ built upstream's server. Its options
            # come as under install(): the daemon's own, then LIGHTNING_ATTEMPTS_<OPTION>, then AGL_KEY.
            upstream: Any = built
            explicit = {
                "host": upstream.host,
                "port": upstream.port,
                "task_timeout_seconds": upstream._task_timeout_seconds,
            }
            self.server = AttemptAwareServer(**resolve(explicit))
        server = self.attempt_server if compat.legacy_mode(self) else None
        if server is not None and server.options.rewrite_loopback_endpoints is None:
            # Its LLM proxy listens on 0.0.0.0 but is published as 127.0.0.1: serve workers a host they can reach.
            server.options = server.options.replace(rewrite_loopback_endpoints=True)

    @property
    def attempt_server(self) -> AttemptAwareServer:
        """The daemon's server (v0), attempt-aware whichever way the daemon was built."""
        server: Any = self.server
        assert isinstance(server, AttemptAwareServer)
        return server

    # -- the LLM proxy ------------------------------------------------------------

    def _start_proxy_server_v0(self) -> None:  # 0.2+
        """Serve our LLM proxy where upstream's Flask one would serve (upstream's ``start()`` calls this)."""
        self._start_attempt_proxy()

    def _start_proxy_server(self) -> None:  # 0.1.x
        """Serve our LLM proxy where upstream's Flask one would serve (upstream's ``start()`` calls this)."""
        self._start_attempt_proxy()

    def _start_attempt_proxy(self) -> None:
        def backends() -> list[str]:
            return self.backend_llm_server_addresses  # read per call: verl sets them at each step

        proxy = AttachedProxy(self.attempt_server, backends, self.proxy_port, self.llm_timeout_seconds)
        proxy.proxy.context.tokenizer = context_limits.own_tokenizer(getattr(self, "tokenizer", None))
        self._on_loop(proxy.start)
        self.attempt_proxy = proxy
        print(f"Proxy server running on port {self.proxy_port}")  # upstream's line, which the guide points to

    # -- setting a batch up -----------------------------------------------------

    async def _async_set_up(self, data: Any, server_addresses: Any, is_train: bool = True) -> None:
        if not compat.legacy_mode(self):
            await super()._async_set_up(data, server_addresses, is_train)
            return
        server = self.attempt_server
        self._count_cancelled(await server.cancel_pending())
        window = StepWindow(server.attempt_stats(), time.time(), time.monotonic())
        if self.attempt_proxy is not None:
            window.proxy_before = self.attempt_proxy.stats()
            self.attempt_proxy.forget()  # calls of earlier batches: none is trained on from here
            context_limits.set_up_batch(self.attempt_proxy.proxy.context, server_addresses, is_train)
            self.attempt_proxy.open_step()  # before the batch is queued: its workers call at once
        self._proxy_triplets = 0
        self._token_ids = StepTokenIds()
        await super()._async_set_up(data, server_addresses, is_train)
        window.rollout_ids = list(self._task_id_to_original_sample)
        self._step = window

    def clear_data_and_server(self) -> None:
        """Upstream's reset, and cancel every task the server still holds (none of it can be claimed later)."""
        super().clear_data_and_server()
        self._step = None
        if not compat.legacy_mode(self) or self._on_server_loop():
            return  # on the loop: upstream's set-up calling it; _async_set_up cancels, awaiting
        if self.attempt_server.loop is None or not self.attempt_server.startup_event.is_set():
            return  # not running: nothing held
        self._count_cancelled(self._on_loop(self.attempt_server.cancel_pending))
        self._drain_llm_calls()  # verl puts vLLM to sleep next: nothing may be in flight

    def _count_cancelled(self, cancelled: list[str]) -> None:
        if not cancelled:
            return
        self.cancelled_total += len(cancelled)
        self._cancelled_unreported += len(cancelled)
        logger.warning(
            "Cancelled %d task(s) left on the server from an earlier batch, so that none is claimed in the next "
            "(e.g. %s)",
            len(cancelled),
            ", ".join(cancelled[:3]),
        )

    # -- waiting for a batch ------------------------------------------------------

    async def _async_run_until_finished(self, verbose: bool = True) -> None:
        if not compat.legacy_mode(self):
            await super()._async_run_until_finished(verbose)
            return
        server = self.attempt_server
        completed = compat.completed_rollouts(self)
        expected = self._task_id_to_original_sample
        total = self._total_tasks_queued
        shown: int | None = None
        stall_said = -1.0  # the stall_episodes of the last stall said
        while True:
            for rollout in await server.retrieve_completed_rollouts():
                rollout_id = rollout.rollout_id
                if rollout_id in completed:
                    continue
                self._validate_data(rollout)
                if rollout_id in expected:
                    completed[rollout_id] = rollout
                else:
                    print(f"Warning: Received unknown rollout ID {rollout_id}, skipping.")
            if verbose and len(completed) != shown:
                shown = len(completed)
                print(f"Completed {shown}/{total} tasks...")
            pending = [rollout_id for rollout_id in expected if rollout_id not in completed]
            if len(completed) >= total or not pending:
                break
            if not server.store.unfinished(pending):
                raise RuntimeError(
                    f"{len(pending)} task(s) of this batch ended without a result the daemon can take "
                    f"(cancelled, or taken by another caller), e.g. {pending[0]}"
                )
            await server.wait_for_rollouts(pending, timeout=self.progress_interval)
            stats = server.attempt_stats()
            if verbose and (line := stall_line(stats, stall_said)) is not None:
                stall_said = stats["stall_episodes"]
                print(f"Completed {shown}/{total} tasks... {line}")
        if self._step is not None:
            self._step.last_result_monotonic = time.monotonic()
        if self.attempt_proxy is not None:
            self.attempt_proxy.end_step()  # every result is in: what is still called serves no one
        print("All tasks finished.")

    # -- metrics ------------------------------------------------------------------

    @functools.wraps(_UPSTREAM.get_train_data_batch)  # its arguments differ between releases
    def get_train_data_batch(self, *args: Any, **kwargs: Any) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        if compat.legacy_mode(self):
            if self.attempt_proxy is not None:  # the trainer's row lengths, for the next steps' calls
                guard, enabled = self.attempt_proxy.proxy.context, self.attempt_server.options.llm_trainer_limits
                self._on_loop(lambda: context_limits.learn_from_batch_call(guard, self, args, kwargs, enabled=enabled))
            self._drain_llm_calls()  # in this step's metrics
            self._train_on_proxy_calls()
            no_training_data(compat.completed_rollouts(self).values())  # raises where upstream fails in torch
        parent: Any = super()
        batch, metrics = parent.get_train_data_batch(*args, **kwargs)
        if compat.legacy_mode(self):
            metrics = {**metrics, **self._attempt_metrics(TRAIN_PREFIX)}
        return batch, metrics

    def get_test_metrics(self) -> Any:
        if compat.legacy_mode(self):
            self._drain_llm_calls()  # in this step's metrics
            self._train_on_proxy_calls()  # validation's lengths and turns, as the client's triplets would give
        metrics = super().get_test_metrics()
        if compat.legacy_mode(self):
            metrics = {**metrics, **self._attempt_metrics(VAL_PREFIX)}
        return metrics

    def _train_on_proxy_calls(self) -> None:
        """Give each result with a reward and no triplets the triplets of its stored attempt's LLM calls, and
        triplets without token ids those calls' ids."""
        proxy, completed = self.attempt_proxy, compat.completed_rollouts(self)
        wanting, lacking = without_triplets(completed), lacking_token_ids(completed)
        if proxy is not None and lacking:
            filled = fill_token_ids(completed, self._on_loop(lambda: proxy.stored_calls(lacking)))
            self._token_ids.add(filled)
            self._proxy_triplets += filled.built
        self._token_ids.left = count_without_token_ids(completed.values())
        if proxy is None or not wanting:
            return
        built = fill_from_calls(completed, self._on_loop(lambda: proxy.stored_calls(wanting)))
        self._proxy_triplets += built
        if built:
            logger.info(
                "Built %d triplet(s) from the LLM calls of the stored attempts of %d rollout(s) without triplets",
                built,
                len(wanting),
            )

    def _drain_llm_calls(self) -> None:
        """End the step for the LLM proxy: refuse calls until the next batch, wait (bounded) for those in flight."""
        proxy = self.attempt_proxy
        if proxy is None:
            return
        bound = self.attempt_server.options.llm_drain_timeout_seconds + UNWIND_SECONDS + READ_TIMEOUT
        self._on_loop(proxy.drain, timeout=bound)

    def _attempt_metrics(self, prefix: str) -> dict[str, float]:
        window, proxy = self._step, self.attempt_proxy
        if window is None:
            return {}
        server = self.attempt_server

        def read() -> tuple[dict[str, Any], list[Any], dict[str, Any] | None]:
            histories = [server.attempt_history(rid) for rid in window.rollout_ids]
            proxy_after = None if proxy is None else proxy.stats()
            if proxy is not None:
                proxy.forget()  # the step's records are used: memory stays bounded by one step's calls
                proxy.log_refusals()  # the step's, before its metrics
            return server.attempt_stats(), histories, proxy_after

        after, histories, proxy_after = self._on_loop(read)
        cancelled, self._cancelled_unreported = self._cancelled_unreported, 0
        metrics = step_metrics(window, after, histories, cancelled, prefix, proxy_after, self._proxy_triplets)
        if proxy_after is not None:
            metrics.update(self._token_ids.metrics(prefix))
        server.steps.add(metrics)  # the dashboard's chart (a deque's append: safe from this thread)
        return metrics

    # -- the server's loop --------------------------------------------------------

    def _on_server_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.attempt_server.loop
        except RuntimeError:
            return False

    def _on_loop(self, function: Callable[[], Any], timeout: float = READ_TIMEOUT) -> Any:
        """``function()`` (a coroutine function's result is awaited) run on the server's event loop."""
        loop = self.attempt_server.loop
        if loop is None:
            raise ServerNotRunning("Server is not running or ready.")

        async def call() -> Any:
            result = function()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)
