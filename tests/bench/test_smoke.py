"""The benchmark keeps working: ``python -m benchmarks --quick`` end to end, tiny sizes.

Not a timed test: it checks that every measure is produced for both servers, not how
fast either is (the figures in README.md come from a full run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..paths import ROOT


@pytest.mark.once
@pytest.mark.timeout(600)  # six server processes, each importing agentlightning (~15 s on 0.2+)
def test_quick_benchmark_measures_both_servers(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for kind in ("upstream", "patched"):
        throughput = results[kind]["throughput"]
        assert throughput["cycles"] > 0 and throughput["failed"] == 0, throughput
        assert throughput["server_cpu_us_per_cycle"] > 0
        points = results[kind]["latency"]["points"]
        assert [p["claims_in_flight"] for p in points] == [0, 200]
        assert all(p["p50_ms"] > 0 and p["p99_ms"] >= p["p50_ms"] for p in points), points
        series = results[kind]["memory"]["series"]
        assert [s["completed"] for s in series] == [0, 1_000, 2_000]
        fleet = results[kind]["fleet"]
        assert fleet["tasks"] == 4 and 0 < fleet["p50_ms"] <= fleet["p99_ms"] <= fleet["max_ms"], fleet
        assert fleet["requests_per_idle_worker_minute"] > 0
        assert results[kind]["idle_cpu"]["workers"] == 20 and results[kind]["idle_cpu"]["server_cpu_ms_per_s"] >= 0
    table = (tmp_path / "results.md").read_text()
    assert table == done.stdout.split("\n\nplot:")[0].strip() + "\n"
    assert "| claim+submit cycles/s |" in table and "| server CPU per cycle (us) |" in table
    assert "| RSS after 2,000 completed tasks (MB) |" in table
    assert "| requests per idle worker-minute |" in table


def test_the_benchmarks_read_litellms_bundled_cost_map_unless_told_otherwise() -> None:
    """``python -m benchmarks`` and its modules: set before any of them imports agentlightning."""
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    script = "import os, benchmarks; print(os.environ.get('LITELLM_LOCAL_MODEL_COST_MAP'))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


def test_the_throughput_rows_give_each_figures_spread_over_the_rounds() -> None:
    from benchmarks.__main__ import throughput_rows

    def rounds(*cycles: float) -> dict[str, Any]:
        return {"rounds": [{"cycles_per_second": c, "server_cpu_us_per_cycle": 1e6 / c} for c in cycles]}

    cycles, cpu = throughput_rows(rounds(1000, 1200, 900), rounds(1100, 1200, 990))
    assert cycles == "| claim+submit cycles/s | 1000 (900 to 1200) | 1100 (990 to 1200) | 1.10x (1.00x to 1.10x) |"
    assert cpu == "| server CPU per cycle (us) | 1000 (833 to 1111) | 909 (833 to 1010) | 0.91x (0.91x to 1.00x) |"
    assert throughput_rows(rounds(1000), rounds(1100))[0] == "| claim+submit cycles/s | 1000 | 1100 | 1.10x |"


def test_startup_gives_a_median_and_its_range() -> None:
    from benchmarks.startup import spread

    assert spread([3e-6, 1e-6, 2e-6], 1e-6, ".1f") == "2.0 (1.0 to 3.0)"
