"""``lightning-attempts demo``: a quick run, asserting the figures of its table."""

from __future__ import annotations

import io
from typing import Any

from click.testing import CliRunner
from rich.console import Console

from lightning_attempts.cli import main
from lightning_attempts.demo import comparison, verdict
from lightning_attempts.scenario import BatchReport, ScenarioReport


def table_rows(output: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) == 3 and cells[0]:
            rows[cells[0]] = cells[1:]
    return rows


def test_demo_shows_the_failure_and_the_fix() -> None:
    result = CliRunner().invoke(main, ["demo", "--batches", "3", "--batch-size", "6", "--fleet", "mixed"])
    assert result.exit_code == 0, result.output
    assert "lightning_attempts: batch 3/3: 6 rollouts" in result.output  # plain progress off a terminal
    rows = table_rows(result.output)
    assert rows["batches"] == ["3", "3"]
    assert rows["tasks queued"] == ["18", "18"]
    upstream_stored, patched_stored = (int(cell) for cell in rows["rollouts stored"])
    assert upstream_stored > 18 and patched_stored == 18
    upstream_trouble = sum(
        int(rows[name][0]) for name in ("duplicates", "from another batch", "late, after the last batch")
    )
    assert upstream_trouble >= 1
    assert [rows[name][1] for name in ("duplicates", "from another batch", "late, after the last batch")] == ["0"] * 3
    assert rows["dropped: already_completed"][0] == "n/a" and int(rows["dropped: already_completed"][1]) >= 1
    assert rows["completed == queued held"] == ["NO", "yes"]
    assert "held in every batch" in result.output
    # What may still be stale is shown, and the closing line does not claim more than was proved.
    unverified = rows["stored unverified, task re-claimed"]
    assert unverified[0] == "n/a" and unverified[1].isdigit()
    assert rows["stored from a superseded attempt"] == ["n/a", "0"]
    assert ("Not proved" in result.output) == (int(unverified[1]) > 0)


def report(**stats: Any) -> ScenarioReport:
    counts: dict[str, Any] = {"dropped": {}, "accepted_unverified_reclaimed": 0, "salvaged": 0, **stats}
    return ScenarioReport(server="AttemptAwareServer", batches=[BatchReport(0, 4, received=4)], stats=counts)


def rendered(text: Any) -> str:
    console = Console(width=300, file=io.StringIO())
    console.print(text)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_the_table_and_closing_line_show_results_that_may_be_a_superseded_attempts() -> None:
    mixed = report(accepted_unverified_reclaimed=2)
    rows = table_rows(rendered(comparison(report(), mixed, ["clean", "mixed"])))
    assert rows["stored unverified, task re-claimed"] == ["0", "2"]
    line = rendered(verdict(mixed))
    assert "held in every batch" in line
    assert "Not proved: 2 results stored without an attempt id (old clients) for re-claimed tasks" in line
    assert "require_attempt_id=True" in line
    salvaged = rendered(verdict(report(salvaged=1)))
    assert "Not proved: 1 result of superseded attempts stored on purpose (salvage)" in salvaged
    clean = rendered(verdict(report()))
    assert "Not proved" not in clean and "Every stored result was its task's only or live claim's" in clean
    broken = ScenarioReport(server="x", batches=[BatchReport(0, 4, received=5, duplicates=1)], stats=None)
    assert "did NOT hold" in rendered(verdict(broken))
