"""The dashboard's GET routes: the page at ``/dashboard``, agentlightning 0.3.0's read routes, and a summary.

``/v1/agl/rollouts``, ``/v1/agl/rollouts/{id}``, ``/v1/agl/rollouts/{id}/attempts``, ``/v1/agl/workers``,
``/v1/agl/resources`` and ``/v1/agl/spans`` answer as a LightningStore server does (``{items, limit, offset,
total}``), from the store of the run in progress (503 between runs); ``/dashboard/summary`` gives the counters,
the refusals, the LLM proxy's figures and the last steps' ``attempts/*`` in one answer. Each reads on the server's
loop, changes nothing, and answers one bounded page (``views``).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from fastapi import FastAPI, HTTPException, Query
from starlette.responses import FileResponse, Response

from ..store import AttemptAwareDataStore
from ..store.stranded import Stranded
from . import views
from .steps import StepLog
from .workers import Worker, known_workers

DEFAULT_LIMIT = 50
_PAGE_HEADERS = {"cache-control": "no-store"}
PAGE = Path(__file__).with_name("static") / "index.html"
"""The page, shipped in the wheel beside this module."""


UPSTREAM_PAGES = ("/", "/rollouts", "/resources", "/traces", "/runners", "/settings")
"""Where agentlightning 0.3.0's own page is served when its wheel is installed (its paths, its assets' ``/assets``)."""


def upstream_dashboard() -> Path | None:
    """The directory of agentlightning's own built dashboard (0.3.0's wheel ships it), if installed; else None."""
    spec = importlib.util.find_spec("agentlightning")
    if spec is None or spec.origin is None:
        return None
    built = Path(spec.origin).parent / "dashboard"
    return built if (built / "index.html").is_file() else None


class ProxyReadout(Protocol):
    """What the dashboard reads of an attempt-aware LLM proxy beside the server (an ``AttachedProxy``)."""

    def stats(self) -> dict[str, Any]: ...

    def call_summaries(self, rollout_id: str, attempt_id: str) -> list[dict[str, Any]]: ...


class Source(Protocol):
    """What the dashboard reads: the server (``AttemptAwareServer``)."""

    steps: StepLog
    llm_proxy_readout: ProxyReadout | None

    @property
    def running_store(self) -> AttemptAwareDataStore | None: ...

    def attempt_stats(self) -> dict[str, Any]: ...


T = TypeVar("T")

RECOUNT_SECONDS = 10.0
"""How often, at most, the figures that take a pass over every remembered task are recounted while watched (the
finished tasks by status; the stranded claims), once more than ``RECOUNT_ALWAYS_BELOW`` tasks are held."""
RECOUNT_ALWAYS_BELOW = 10_000
"""Held tasks (claimed and remembered) below which those figures are counted afresh on every request."""


class Recounted(Generic[T]):
    """``count(store)``, counted afresh for a new store, a small one, or every ``RECOUNT_SECONDS``; else as last
    counted: a watching browser costs a pass over 100,000 remembered tasks every 10 s, not every refresh."""

    def __init__(
        self,
        count: Callable[[AttemptAwareDataStore], T],
        *,
        clock: Callable[[], float] = time.monotonic,
        always_below: int = RECOUNT_ALWAYS_BELOW,
    ) -> None:
        self._count = count
        self._clock = clock
        self._always_below = always_below
        self._last: tuple[AttemptAwareDataStore, float, T] | None = None

    def __call__(self, store: AttemptAwareDataStore) -> T:
        now, last = self._clock(), self._last
        held = len(store.book.claimed) + len(store.book.finished)
        if last is None or last[0] is not store or held < self._always_below or now - last[1] >= RECOUNT_SECONDS:
            last = self._last = (store, now, self._count(store))
        return last[2]


def _bounded(limit: int, offset: int) -> tuple[int, int]:
    """``limit`` (-1: as many as a page holds) and ``offset``, checked; 400 for bad ones."""
    if limit == 0 or limit < -1:
        raise HTTPException(400, "limit must be greater than 0, or -1 for a full page")
    if offset < 0:
        raise HTTPException(400, "offset must be 0 or more")
    return (views.MAX_LIMIT if limit == -1 else min(limit, views.MAX_LIMIT)), offset


SUMMARY_WORKERS = 25
"""The workers the summary lists, the most recently heard of first (``/v1/agl/workers`` pages them all)."""
REFUSAL_KEYS = ("dropped", "dropped_total", "refused", "heartbeats_stale", "releases_stale", "unauthorized")
"""The counters of refused requests, shown together."""


def summary(
    source: Source,
    store: AttemptAwareDataStore,
    finished: Mapping[views.RolloutStatus, int] | None = None,
    stranded: Stranded | None = None,
    workers: Sequence[Worker] | None = None,
) -> dict[str, Any]:
    """The counters, the tasks by status, the refusals, the stranded claims, the workers, the proxy's figures and the
    steps; ``finished`` (``views.finished_counts``), ``stranded`` (``store.stranded()``) and ``workers``
    (``known_workers``) as last counted, if given."""
    stats = source.attempt_stats()
    stranded = store.stranded() if stranded is None else stranded
    workers = known_workers(store, stranded) if workers is None else workers
    proxy = source.llm_proxy_readout
    resource_ids, latest = store.resource_ids()
    return {
        "statuses": views.status_counts(store, finished),
        "stats": stats,
        "refusals": {key: stats[key] for key in REFUSAL_KEYS},
        "stranded": {"total": stranded.total, "counts": dict(stranded.counts), "latest": stranded.latest},
        "workers": {"total": len(workers), "items": [worker.item() for worker in workers[:SUMMARY_WORKERS]]},
        "resources": {"versions": len(resource_ids), "latest": latest},
        "proxy": None if proxy is None else _proxy_summary(proxy.stats()),
        "steps": source.steps.recent(),
        "options": {
            "task_timeout_seconds": store.options.task_timeout_seconds,
            "unresponsive_seconds": store.options.unresponsive_seconds,
            "max_claims": store.options.max_claims,
            "stale_policy": store.options.stale_policy,
        },
    }


def _proxy_summary(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The proxy's counters, without its latency buckets (``/metrics`` has the histogram)."""
    return {key: value for key, value in stats.items() if key != "added_latency_buckets"}


class DashboardRoutes:
    """The dashboard's routes on one server's app (``install``)."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._finished = Recounted(views.finished_counts)
        self._stranded = Recounted(lambda store: store.stranded())
        self._known_workers = Recounted(lambda store: known_workers(store, self._stranded(store)))

    def _store(self) -> AttemptAwareDataStore:
        store = self._source.running_store
        if store is None:
            raise HTTPException(503, "Server not fully initialized.")
        return store

    def install(self, app: FastAPI) -> None:
        add: Callable[..., None] = app.add_api_route
        add("/dashboard", self._page, methods=["GET"], include_in_schema=False)
        add("/dashboard/summary", self._summary, methods=["GET"], summary="Dashboard: counters, refusals, steps")
        add("/v1/agl/rollouts", self._rollouts, methods=["GET"], summary="Tasks as rollouts, a page")
        add("/v1/agl/rollouts/{rollout_id}", self._rollout, methods=["GET"], summary="A task as a rollout")
        add("/v1/agl/rollouts/{rollout_id}/attempts", self._attempts, methods=["GET"], summary="A task's claims")
        add("/v1/agl/workers", self._workers, methods=["GET"], summary="Workers known by name, a page")
        add("/v1/agl/resources", self._resources, methods=["GET"], summary="Resource versions, a page")
        add("/v1/agl/spans", self._spans, methods=["GET"], summary="An attempt's LLM calls through the proxy")
        add("/v1/agl/health", self._health, methods=["GET"], summary="Whether the server serves a run")
        built = upstream_dashboard()
        if built is not None:  # agentlightning 0.3.0's own page, from its wheel, reading the routes above
            assets = {path.name: path for path in (built / "assets").iterdir() if path.is_file()}

            async def upstream_page() -> Response:
                return FileResponse(built / "index.html", headers=_PAGE_HEADERS)

            async def upstream_asset(name: str) -> Response:
                if name not in assets:
                    raise HTTPException(404, "No such file")
                return FileResponse(assets[name])

            for path in UPSTREAM_PAGES:  # its client-side routes, so that a reload finds the page
                add(path, upstream_page, methods=["GET"], include_in_schema=False)
            add("/assets/{name}", upstream_asset, methods=["GET"], include_in_schema=False)

    @staticmethod
    async def _page() -> Response:
        return Response(PAGE.read_bytes(), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def _health(self) -> dict[str, str]:
        self._store()
        return {"status": "ok"}

    async def _summary(self) -> dict[str, Any]:
        store = self._store()
        return summary(self._source, store, self._finished(store), self._stranded(store), self._known_workers(store))

    async def _rollouts(
        self,
        status_in: list[views.RolloutStatus] | None = Query(None),  # noqa: B008 # FastAPI's way
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        sort_order: Literal["asc", "desc"] = "asc",
    ) -> dict[str, Any]:
        limit, offset = _bounded(limit, offset)
        store = self._store()
        newest_first = sort_order == "desc"
        return views.rollouts(store, status_in or (), limit, offset, newest_first, self._finished(store))

    async def _rollout(self, rollout_id: str) -> dict[str, Any]:
        found = views.rollout(self._store(), rollout_id)
        if found is None:
            raise HTTPException(404, f"Rollout ID '{rollout_id}' is neither live nor remembered.")
        return found

    async def _attempts(self, rollout_id: str, limit: int = -1, offset: int = 0) -> dict[str, Any]:
        limit, offset = _bounded(limit, offset)
        found = views.attempts(self._store(), rollout_id, limit, offset)
        if found is None:
            raise HTTPException(404, f"Rollout ID '{rollout_id}' is neither live nor remembered.")
        return found

    async def _workers(self, limit: int = DEFAULT_LIMIT, offset: int = 0) -> dict[str, Any]:
        limit, offset = _bounded(limit, offset)
        workers = self._known_workers(self._store())
        return views.page((worker.item() for worker in workers[offset : offset + limit]), len(workers), limit, offset)

    async def _resources(self, limit: int = DEFAULT_LIMIT, offset: int = 0) -> dict[str, Any]:
        limit, offset = _bounded(limit, offset)
        store = self._store()
        ids, latest = store.resource_ids()
        items: list[dict[str, Any]] = []
        for version, resources_id in enumerate(ids[offset : offset + limit], offset + 1):
            update = await store.get_resources_by_id(resources_id)
            named: Any = {} if update is None else update.model_dump(mode="json").get("resources", {})
            items.append({"resources_id": resources_id, "version": version, "resources": named})
            if resources_id == latest:
                items[-1]["latest"] = True
        return views.page(items, len(ids), limit, offset)

    async def _spans(self, rollout_id: str, attempt_id: str | None = None, limit: int = -1, offset: int = 0) -> Any:
        limit, offset = _bounded(limit, offset)
        store, proxy = self._store(), self._source.llm_proxy_readout
        found = views.find(store, rollout_id)
        if found is None:
            raise HTTPException(404, f"Rollout ID '{rollout_id}' is neither live nor remembered.")
        spans: list[dict[str, Any]] = []
        for sequence, attempt in enumerate(found[1], 1):
            if proxy is None or attempt_id not in (None, attempt.attempt_id):
                continue
            for index, call in enumerate(proxy.call_summaries(rollout_id, attempt.attempt_id)):
                name = f"llm {call.get('method', '')} {call.get('path', '')}".strip()
                span = {"rollout_id": rollout_id, "attempt_id": attempt.attempt_id, "sequence_id": sequence}
                spans.append({**span, "span_id": f"{attempt.attempt_id}-{index}", "name": name, "attributes": call})
        return views.page(spans[offset : offset + limit], len(spans), limit, offset)
