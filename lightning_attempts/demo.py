"""``lightning-attempts demo``: the seed's failure and the fix, side by side, in under a minute."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import scenario
from .compat import AgentLightningServer
from .options import StalePolicy
from .server import AttemptAwareServer
from .store import DropReason


def run_demo(
    config: scenario.Scenario,
    fleet: list[scenario.WorkerKind],
    stale_policy: StalePolicy,
    console: Console,
) -> tuple[scenario.ScenarioReport, scenario.ScenarioReport]:
    """Run the straggler loop against upstream's server, then ours; print the comparison."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    sides: list[tuple[str, Callable[..., AgentLightningServer]]] = [
        ("upstream", AgentLightningServer),
        ("lightning_attempts", functools.partial(AttemptAwareServer, stale_policy=stale_policy)),
    ]
    console.print(
        f"[bold]Upstream's server, then lightning_attempts ({stale_policy}): "
        f"{config.batches} batches of {config.batch_size} tasks, {len(fleet)} workers ({', '.join(fleet)}), "
        f"task timeout {config.task_timeout}s; worker 0 takes {config.straggle_factor}x the timeout "
        "on every task.[/bold]"
    )
    reports: list[scenario.ScenarioReport] = []
    for label, factory in sides:
        reports.append(_run_side(label, factory, config, fleet, console))
    upstream, patched = reports
    console.print(comparison(upstream, patched, [label for label, _ in sides]))
    console.print(verdict(patched))
    return upstream, patched


def verdict(patched: scenario.ScenarioReport) -> str:
    """The closing line: what the run with lightning_attempts proved, and what it did not."""
    if not patched.clean:
        return "With lightning_attempts, [bold]len(completed) == total_queued[/bold] did NOT hold."
    proved = (
        "With lightning_attempts, [bold]len(completed) == total_queued[/bold] held in every batch: "
        "no duplicate, nothing from another batch, nothing late."
    )
    caveats: list[str] = []
    if patched.unverified_reclaimed:
        caveats.append(
            f"{_results(patched.unverified_reclaimed)} stored without an attempt id (old clients) for re-claimed "
            "tasks may be a superseded attempt's; run every worker on AttemptAwareClient "
            "(LIGHTNING_ATTEMPTS_INSTALL=1), then set require_attempt_id=True, to close that"
        )
    if patched.salvaged:
        caveats.append(f"{_results(patched.salvaged)} of superseded attempts stored on purpose (salvage)")
    if not caveats:
        return proved + " Every stored result was its task's only or live claim's."
    return proved + " Not proved: " + "; ".join(caveats) + "."


def _results(count: int) -> str:
    return f"{count} result{'s' if count != 1 else ''}"


def _run_side(
    label: str,
    factory: Callable[..., AgentLightningServer],
    config: scenario.Scenario,
    fleet: list[scenario.WorkerKind],
    console: Console,
) -> scenario.ScenarioReport:
    def describe(batch: scenario.BatchReport) -> str:
        trouble = f", {batch.from_other_batch} from another batch" if batch.from_other_batch else ""
        trouble += f", {batch.duplicates} duplicates" if batch.duplicates else ""
        return f"{label}: batch {batch.index + 1}/{config.batches}: {batch.received} rollouts{trouble}"

    if not console.is_terminal:
        return scenario.run(factory, fleet, config, on_batch=lambda batch: console.print(describe(batch)))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=config.batches)

        def advance(batch: scenario.BatchReport) -> None:
            progress.update(task, advance=1, description=describe(batch))

        return scenario.run(factory, fleet, config, on_batch=advance)


def comparison(upstream: scenario.ScenarioReport, patched: scenario.ScenarioReport, labels: list[str]) -> Table:
    """The side-by-side table the demo ends with."""
    table = Table(title="What the training loop received")
    table.add_column("")
    for label in labels:
        table.add_column(label, justify="right")
    rows: list[tuple[str, Callable[[scenario.ScenarioReport], Any]]] = [
        ("batches", lambda r: len(r.batches)),
        ("tasks queued", lambda r: r.queued),
        ("rollouts stored", lambda r: r.stored),
        ("duplicates", lambda r: r.duplicates),
        ("from another batch", lambda r: r.from_other_batch),
        ("late, after the last batch", lambda r: r.late_after_last_batch),
        *[(f"dropped: {reason.value}", functools.partial(_drops, reason=reason.value)) for reason in DropReason],
        ("stored unverified, task re-claimed", lambda r: _counted(r, r.unverified_reclaimed)),
        ("stored from a superseded attempt", lambda r: _counted(r, r.salvaged)),
        ("completed == queued held", lambda r: "yes" if r.clean else "NO"),
    ]
    for name, value in rows:
        table.add_row(name, *(str(value(report)) for report in (upstream, patched)))
    return table


def _drops(report: scenario.ScenarioReport, reason: str) -> str:
    return str(report.drops.get(reason, 0)) if report.stats is not None else "n/a"


def _counted(report: scenario.ScenarioReport, count: int) -> str:
    """A count the server keeps; upstream's keeps none (it stores every result unchecked)."""
    return str(count) if report.stats is not None else "n/a"
