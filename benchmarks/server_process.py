"""One server under test, in a process of its own, with control routes for the benchmark.

    python -m benchmarks.server_process {upstream,patched} PORT [--loop asyncio|uvloop] [--http auto|h11]

The server runs as in a training script: ``start()`` inside an ``asyncio`` loop the
script made (uvicorn's own loop setting applies only to ``uvicorn.run``), with uvicorn's
default parser (httptools when installed). ``--loop uvloop`` runs that loop on uvloop.

The control routes (``/bench/...``) run inside the server process so that setting up
100,000 claims in flight or a million completed tasks costs no HTTP round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import psutil
import uvicorn

from lightning_attempts import AttemptAwareServer
from lightning_attempts.compat import AgentLightningServer, LegacyRollout

HUGE_TIMEOUT = 1e9  # nothing is requeued during a measurement


def build(kind: str, port: int, http: str, access_log: bool = True) -> AgentLightningServer:
    server_class = AttemptAwareServer if kind == "patched" else AgentLightningServer
    server = server_class(host="127.0.0.1", port=port, task_timeout_seconds=HUGE_TIMEOUT)
    # As users run it (upstream's log level, access log on), with the parser asked for.
    config = uvicorn.Config(
        server._app,  # pyright: ignore[reportPrivateUsage]
        host="127.0.0.1",
        port=port,
        log_level="info",
        http=http,
        access_log=access_log,
    )
    server._uvicorn_server.config = config  # pyright: ignore[reportPrivateUsage] # the same Server, reconfigured
    add_control_routes(server)
    return server


def add_control_routes(server: Any) -> None:
    process = psutil.Process()
    app = server._app

    async def queue(n: int) -> dict[str, Any]:
        at = time.time()
        for i in range(n):
            await server.queue_task({"i": i})
        return {"queued": n, "at": at}

    async def claim(n: int) -> dict[str, Any]:
        store = server._store
        for _ in range(n):
            await store.get_next_task()
        return {"claimed": n}

    async def complete(n: int, retrieve_every: int = 1000) -> dict[str, Any]:
        """Queue, claim and submit ``n`` tasks in-process, retrieving results as a trainer would."""
        store = server._store
        started = time.perf_counter()
        for i in range(n):
            await server.queue_task({"i": i})
            task = await store.get_next_task()
            attempt_id = getattr(task, "attempt_id", None)
            rollout = LegacyRollout(rollout_id=task.rollout_id, final_reward=1.0)
            if attempt_id is not None:
                store.submit(rollout, attempt_id)
            else:
                await store.store_rollout(rollout)
            if i % retrieve_every == 0:
                await server.retrieve_completed_rollouts()
                await asyncio.sleep(0)
        await server.retrieve_completed_rollouts()
        return {"completed": n, "seconds": time.perf_counter() - started}

    async def usage(collect: bool = True) -> dict[str, Any]:
        if collect:  # for a steady RSS; not when measuring CPU, which it would count
            gc.collect()
        times = process.cpu_times()
        return {"cpu": times.user + times.system, "rss": process.memory_info().rss}

    app.add_api_route("/bench/queue", queue, methods=["POST"])
    app.add_api_route("/bench/claim", claim, methods=["POST"])
    app.add_api_route("/bench/complete", complete, methods=["POST"])
    app.add_api_route("/bench/usage", usage, methods=["GET"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["upstream", "patched"])
    parser.add_argument("port", type=int)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--http", default="auto")
    parser.add_argument("--no-access-log", action="store_true")
    options = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket per idle worker
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = build(options.kind, options.port, options.http, not options.no_access_log)
    if options.loop == "uvloop":  # pip install 'lightning-attempts[bench]'
        import uvloop

        uvloop.run(server.run_forever())
    else:
        asyncio.run(server.run_forever())


if __name__ == "__main__":
    main()
