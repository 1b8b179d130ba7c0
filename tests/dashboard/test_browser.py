"""The dashboard as a user sees it: a real run (keyed server, shim workers, a producer) in headless Chromium.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and Playwright's Python client (the test extra); Playwright's
own browser download is not used. Takes the screenshots README shows; with ``DASHBOARD_SCREENSHOTS=docs`` they
replace ``docs/dashboard.png`` and ``docs/dashboard_agentlightning_0.3.0.png`` (else they go to the test's tmp_path,
so that a test run leaves the checkout as it was).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightning_attempts import AttemptAwareServer
from lightning_attempts.client import RemoteServer
from lightning_attempts.testing import ServerThread, serve_in_thread

from .. import prewarmed
from ..paths import SCRIPTS
from ..upstream import RESOURCES
from ..waiting import until

KEY = "browser-Key_0123456789"
LEASE = 1.5
SHIM_WORKER = SCRIPTS / "shim_worker.py"
ROOT = Path(__file__).parents[2]
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)

pytestmark = [
    pytest.mark.once,
    pytest.mark.only_release(
        "0.3.0"
    ),  # one tier: the page is the same on every release (test_read_routes.py runs on each)
    pytest.mark.timeout(240),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium; .ci/run does)"),
]


def _worker(endpoint: str, started: Path) -> subprocess.Popen[Any]:
    return prewarmed.popen(
        [sys.executable, str(SHIM_WORKER), endpoint, str(started)], env={**os.environ, "AGL_KEY": KEY}
    )


@pytest.fixture
def run() -> Iterator[tuple[ServerThread[AttemptAwareServer], list[subprocess.Popen[Any]]]]:
    server = AttemptAwareServer(
        port=0, task_timeout_seconds=600, unresponsive_seconds=LEASE, api_key=KEY, producer_api=True
    )
    workers: list[subprocess.Popen[Any]] = []
    with serve_in_thread(server) as served:
        served.call(server.update_resources(RESOURCES))
        try:
            yield served, workers
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(timeout=30)


def test_a_run_in_the_browser(
    run: tuple[ServerThread[AttemptAwareServer], list[subprocess.Popen[Any]]], tmp_path: Path
):
    from playwright.sync_api import expect, sync_playwright

    served, workers = run
    shots = ROOT / os.environ["DASHBOARD_SCREENSHOTS"] if os.environ.get("DASHBOARD_SCREENSHOTS") else tmp_path
    server, url = served.server, served.endpoint

    async def produce(question: str) -> str:
        async with RemoteServer(url, api_key=KEY) as producer:
            return await producer.queue_task({"question": question}, mode="train")

    watched = asyncio.run(produce("what the test watches"))
    first_started, second_started = tmp_path / "first", tmp_path / "second"
    workers.append(_worker(url, first_started))
    until(lambda: workers[0].poll() is not None or first_started.exists(), 120)
    first_rollout = first_started.read_text()
    assert first_rollout == watched
    workers[0].send_signal(signal.SIGKILL)
    assert workers[0].wait(timeout=30) == -signal.SIGKILL

    def outcomes(rollout_id: str) -> list[str]:
        return [e["outcome"] for e in served.run(lambda: server.attempt_history(rollout_id)) or []]

    until(lambda: outcomes(first_rollout) == ["unresponsive"], 30)  # a lease after the kill
    workers.append(_worker(url, second_started))
    until(lambda: outcomes(first_rollout) == ["unresponsive", "in_flight"], 120)  # re-claimed: claim 2
    # The killed worker's late result: refused (409, superseded), as the refusals panel must show.
    history = served.run(lambda: server.attempt_history(first_rollout)) or []
    stale = {"rollout_id": first_rollout, "attempt_id": history[0]["attempt_id"], "final_reward": 1.0}
    refused = httpx.post(f"{url}/rollout", json=stale, headers={"Authorization": f"Bearer {KEY}"})
    assert refused.status_code == 409
    asyncio.run(produce("waits for a worker"))  # one queued, beside the re-claimed one

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            wrong = page.goto(f"{url}/dashboard?key=wrong")
            assert wrong is not None and wrong.status == 401
            assert first_rollout not in page.content()
            answer = page.evaluate("fetch('/v1/agl/rollouts').then(r => r.status)")
            assert answer == 401  # no cookie, no data
            page.goto(f"{url}/dashboard")  # 401: the login form
            page.fill("input[name=key]", "also-wrong")
            with page.expect_navigation():
                page.click("button")
            assert first_rollout not in page.content() and page.locator("input[name=key]").count() == 1
            page.fill("input[name=key]", KEY)
            with page.expect_navigation():
                page.click("button")  # 303 to /dashboard, the key now in a cookie
            assert page.url == f"{url}/dashboard"
            tasks = page.locator("#tasks tbody")
            expect(tasks).to_contain_text(watched, timeout=15_000)  # queued by the producer, shown
            page.locator(f"#tasks tbody tr[data-rollout='{first_rollout}']").click()
            attempts = page.locator("#attempts tbody")
            expect(attempts.locator("tr")).to_have_count(2, timeout=15_000)
            expect(attempts.locator("tr").nth(0)).to_contain_text("unresponsive")
            expect(attempts.locator("tr").nth(1)).to_contain_text("running")
            expect(page.locator("#refusals")).to_contain_text("dropped: superseded")
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
            # agentlightning 0.3.0's own page, from its wheel, on the same cookie and the same read routes.
            page.goto(f"{url}/rollouts")
            expect(page.locator("body")).to_contain_text(watched, timeout=15_000)
            expect(page.locator("body")).to_contain_text("Running")
            page.screenshot(path=str(shots / "dashboard_agentlightning_0.3.0.png"))
        finally:
            browser.close()
