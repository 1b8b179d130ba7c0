"""``lightning-attempts demo``: a quick run, asserting the figures of its table."""

from __future__ import annotations

from click.testing import CliRunner

from lightning_attempts.cli import main


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
