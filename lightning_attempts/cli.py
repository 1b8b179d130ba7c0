"""The ``lightning-attempts`` command line: ``serve`` a patched server, run the ``demo``."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import click

from .outcomes import STALE_POLICIES, StalePolicy
from .store import DEFAULT_MAX_REMEMBERED

LOG_LEVELS = ("debug", "info", "warning", "error")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lightning-attempts")
def main() -> None:
    """Attempt-aware drop-in fix for agentlightning's legacy task server."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, help="Port to bind (0: any free port).")
@click.option("--task-timeout", default=300.0, show_default=True, help="Seconds before a claimed task is requeued.")
@click.option(
    "--stale-policy",
    type=click.Choice(STALE_POLICIES),
    default="reject",
    show_default=True,
    help="What to do with the result of a superseded attempt.",
)
@click.option("--require-attempt-id", is_flag=True, help="Refuse results that carry no attempt id (old clients).")
@click.option(
    "--max-remembered",
    default=DEFAULT_MAX_REMEMBERED,
    show_default=True,
    help="Finished tasks remembered to answer late results.",
)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
def serve(
    host: str,
    port: int,
    task_timeout: float,
    stale_policy: StalePolicy,
    require_attempt_id: bool,
    max_remembered: int,
    log_level: str,
) -> None:
    """Run a standalone AttemptAwareServer until interrupted."""
    from .server import AttemptAwareServer

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = AttemptAwareServer(
        host=host,
        port=port,
        task_timeout_seconds=task_timeout,
        stale_policy=stale_policy,
        require_attempt_id=require_attempt_id,
        max_remembered=max_remembered,
    )
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # upstream configures uvicorn at INFO
        logging.getLogger(name).setLevel(log_level.upper())

    async def run() -> None:
        await server.start()
        click.echo(f"lightning-attempts: serving on {server.endpoint} (stale_policy={stale_policy})", err=True)
        await server.wait_stopped()

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
