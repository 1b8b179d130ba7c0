"""The fleet watch: what no single request shows (a fleet that no longer progresses), said in the log and the stats.

``FleetWatch`` checks its conditions on the server's event loop every ``TICK_SECONDS`` (real time; the conditions
read the store's clock): when one begins to hold it logs one WARNING, repeats it every ``REPEAT_SECONDS`` while it
holds, and logs an INFO line when it ends; ``stats()`` gives, for each condition ``name``, ``{name}_episodes``,
``{name}_seconds`` (every episode's time so far) and ``{name}_ongoing_seconds`` (0: not holding), and its own
figures as ``{name}_{figure}``. A condition is a class with ``Condition``'s members, listed in ``CONDITIONS`` (for
``/metrics``' documentation) and built in ``watch_fleet``: ``NoWorkerAsks`` so far; another (say, every worker gives
back every claim unrun) is written the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from ..options import Clock
from ..store import AttemptAwareDataStore
from .polls import ParkedPolls

logger = logging.getLogger(__package__)  # "lightning_attempts.server"

STALL_SECONDS = 60.0
"""How long tasks may wait, with no claim in flight, before a fleet none of whose workers asks is said stalled.
An idle worker asks at least every 20 s (the shim's long poll, parked meanwhile: asking all along) or 5 s (upstream's
``poll_interval``): 60 s is three missed polls of the slowest, and the switch's lease."""
REPEAT_SECONDS = 300.0
"""How often the WARNING of a condition that still holds is repeated: a few lines an hour, however long it lasts."""
TICK_SECONDS = 5.0
"""Real seconds between two checks: a condition is said at most this late."""


class Condition(Protocol):
    """Something about the fleet as a whole, checked now and then on the server's loop (never per request)."""

    name: ClassVar[str]
    """Prefix of its keys in ``attempt_stats()`` and ``/metrics``."""
    about: ClassVar[str]
    """What an episode is, for ``/metrics``' documentation."""
    figures_about: ClassVar[Mapping[str, str]]
    """Its own figures (0 when it does not hold), each with what it is."""

    def check(self, now: float) -> float | None:
        """When it began to hold (the store's clock) if it has held long enough to be said; else None."""
        ...

    def warning(self, now: float, since: float) -> str:
        """The WARNING: what holds, since when, what to do (only called when said: it may compute what it says)."""
        ...

    def ended(self, now: float, since: float) -> str:
        """The INFO line when it no longer holds."""
        ...

    def figures(self) -> Mapping[str, float]:
        """Its figures as of its last warning."""
        ...


class Asks:
    """When a worker last asked for a task (``GET /task``); a parked long poll is asking all along."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.last = clock()

    def record(self) -> None:
        self.last = self._clock()


class NoWorkerAsks:
    """Tasks wait, none is in flight, and no worker has asked for one for ``bound`` seconds: nothing progresses.

    With a claim in flight, its worker comes back (its result, its timeout, its budget); with a poll parked, it
    takes the next task. Without either, the workers that could ask are stuck in their agents on claims the
    server ended (``store.stranded()``), dead, or gone. Upstream hangs the same way, silently.
    """

    name: ClassVar[str] = "stall"
    about: ClassVar[str] = (
        f"Stalls: tasks queued, none in flight, and no worker asking for one for {STALL_SECONDS:g} s or more."
    )
    figures_about: ClassVar[Mapping[str, str]] = {
        "stranded_attempts": "In the ongoing stall, claims the server ended whose workers never came back.",
    }

    def __init__(self, store: AttemptAwareDataStore, polls: ParkedPolls, asks: Asks, bound: float = STALL_SECONDS):
        self._store = store
        self._polls = polls
        self._asks = asks
        self.bound = bound
        self._waiting: float | None = None  # when tasks were first seen waiting with nothing in flight
        self._stranded = 0
        self._began: tuple[float, str] | None = None  # the stall's start, on the store's clock and as a wall time

    def check(self, now: float) -> float | None:
        if self._polls:  # parked: asking now
            self._asks.last = now
        if not self._store.queued() or self._store.in_flight() or self._polls:
            self._waiting = None
            self._stranded = 0
            return None
        if self._waiting is None:
            self._waiting = now
        since = max(self._waiting, self._asks.last)
        return since if now - since >= self.bound else None

    def warning(self, now: float, since: float) -> str:
        stranded = self._store.stranded()
        self._stranded = stranded.total
        if stranded.latest is None:
            stuck = (
                "No claim was ended under a worker that did not come back: the workers have stopped, were never "
                "started, or cannot reach this server."
            )
        else:
            rollout_id, attempt_id, _ = stranded.latest
            kinds = ", ".join(f"{count} {_KINDS.get(kind, kind)}" for kind, count in sorted(stranded.counts.items()))
            stuck = (
                f"{stranded.total} claim(s) ended by the server under workers that never came back with a result or "
                f"a release ({kinds}; the latest {rollout_id}, attempt {attempt_id}): up to {stranded.total} "
                "worker(s) still inside their agents (told at their next heartbeat, but nothing stops an agent) or "
                "dead."
            )
        if self._began is None or self._began[0] != since:
            self._began = (since, _wall(now, since))
        return (
            f"Stalled: {self._store.queued()} task(s) queued, none in flight, and no worker has asked for a task for "
            f"{now - since:.0f}s (since {self._began[1]}; the last GET /task {now - self._asks.last:.0f}s ago). "
            f"{stuck} Nothing progresses until a worker asks: restart the stuck workers or start more, and give the "
            "agent's tools and LLM calls timeouts of their own; the server kills no worker, and upstream's would wait "
            f"here silently. Repeated every {REPEAT_SECONDS:g}s while it lasts; stall_* in attempt_stats() and "
            "/metrics."
        )

    def ended(self, now: float, since: float) -> str:
        why = "a worker asked for a task" if self._asks.last > since else "no task waits now"
        return f"Stall over after {now - since:.0f}s: {why}."

    def figures(self) -> Mapping[str, float]:
        return {"stranded_attempts": float(self._stranded)}


CONDITIONS: tuple[type[Condition], ...] = (NoWorkerAsks,)
"""Every kind of condition a server watches: ``/metrics`` documents their keys."""

_KINDS = {
    "given_up": "given up at task_budget or max_claims",
    "timed_out": "timed out",
    "unresponsive": "silent past their lease",
    "superseded": "superseded",
    "cancelled": "cancelled",
}


def _wall(now: float, then: float) -> str:
    """The wall-clock time of ``then`` (the store's clock, ``now`` being now), for people."""
    return time.strftime("%H:%M:%S", time.localtime(time.time() - (now - then)))


def counters() -> dict[str, str]:
    """The watch's counters in ``attempt_stats()``, with what each counts (``/metrics``)."""
    keys: dict[str, str] = {}
    for condition in CONDITIONS:
        keys[f"{condition.name}_episodes"] = condition.about
        keys[f"{condition.name}_seconds"] = f"Seconds spent in episodes of {condition.name}, the ongoing one included."
    return keys


def gauges() -> dict[str, str]:
    """The watch's gauges in ``attempt_stats()``, with what each is (``/metrics``)."""
    keys: dict[str, str] = {}
    for condition in CONDITIONS:
        keys[f"{condition.name}_ongoing_seconds"] = f"How long the ongoing {condition.name} has lasted; 0: none."
        keys.update({f"{condition.name}_{figure}": about for figure, about in condition.figures_about.items()})
    return keys


def idle_stats() -> dict[str, float]:
    """Every key of ``FleetWatch.stats()`` at 0: no watch runs (no event loop)."""
    return dict.fromkeys([*counters(), *gauges()], 0.0)


@dataclass
class _Episode:
    since: float
    warned: float


@dataclass
class _Watched:
    condition: Condition
    episode: _Episode | None = None
    episodes: int = 0
    seconds: float = 0.0
    """Seconds of the episodes that ended."""


class FleetWatch:
    """Checks each condition every ``tick`` real seconds on ``loop``; says when one holds, again every ``repeat``."""

    def __init__(
        self,
        conditions: Sequence[Condition],
        clock: Clock,
        loop: asyncio.AbstractEventLoop,
        *,
        tick: float = TICK_SECONDS,
        repeat: float = REPEAT_SECONDS,
    ) -> None:
        self._watched = [_Watched(condition) for condition in conditions]
        self._clock = clock
        self._loop = loop
        self._tick = tick
        self._repeat = repeat
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = self._loop.call_later(self._tick, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        try:
            self.check()
        finally:
            self.start()

    def check(self) -> None:
        """Check every condition now: warn when one begins to hold or has held ``repeat`` since its last warning."""
        now = self._clock()
        for watched in self._watched:
            condition, episode = watched.condition, watched.episode
            since = condition.check(now)
            if episode is not None and since != episode.since:  # over (or over and begun anew)
                logger.info(condition.ended(now, episode.since))
                watched.seconds += now - episode.since
                watched.episode = episode = None
            if since is None:
                continue
            if episode is None:
                watched.episode = _Episode(since, now)
                watched.episodes += 1
                logger.warning(condition.warning(now, since))
            elif now - episode.warned >= self._repeat:
                episode.warned = now
                logger.warning(condition.warning(now, since))

    def stats(self) -> dict[str, float]:
        """Each condition's episodes, their seconds, the ongoing one's, and its figures (``idle_stats``' keys)."""
        now = self._clock()
        stats: dict[str, float] = {}
        for watched in self._watched:
            name, episode = watched.condition.name, watched.episode
            ongoing = 0.0 if episode is None else now - episode.since
            stats[f"{name}_episodes"] = float(watched.episodes)
            stats[f"{name}_seconds"] = watched.seconds + ongoing
            stats[f"{name}_ongoing_seconds"] = ongoing
            figures: Mapping[str, float] = watched.condition.figures() if episode is not None else {}
            for figure in watched.condition.figures_about:
                stats[f"{name}_{figure}"] = float(figures.get(figure, 0.0))
        return stats


def watch_fleet(
    store: AttemptAwareDataStore, polls: ParkedPolls, asks: Asks, clock: Clock, loop: asyncio.AbstractEventLoop
) -> FleetWatch:
    """The watch of a server's run, with every condition, started."""
    watch = FleetWatch([NoWorkerAsks(store, polls, asks)], clock, loop)
    watch.start()
    return watch
