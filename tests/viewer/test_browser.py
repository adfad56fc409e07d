"""The viewer in a real headless Chromium: the path a person takes from an incident to its fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from tests.fixtures.hostile import SCRIPT_AND_IMG

import replayable as rp
from replayable.store import Store
from replayable.viewer import create_app

from .conftest import Incident, LiveServer


@rp.boundary(kind="llm")
def shout(prompt: str) -> str:
    """A fake model that upper-cases its prompt."""
    return prompt.upper()


CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright."""
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page, 1280 wide; the test fails on any script error in it."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == []


def _shot(page: Page, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


class TestIncidentWalkthrough:
    def test_from_run_list_to_the_diff_against_the_fix(
        self, page: Page, live_server: LiveServer, incident: Incident, tmp_path: Path
    ) -> None:
        """Run list -> incident -> the bad delete_record step -> diff against the fixed replay."""
        page.goto(live_server.url + "/")
        expect(page.locator("tr.run-row").first).to_be_visible()
        # The demo loops until the model picks the wrong customer: earlier attempts are listed too.
        assert page.locator("tr.run-row").count() >= 3
        expect(page.locator(f"tr.run-row[data-run='{incident.fixed.id}']")).to_contain_text(
            "replay of support-agent"
        )
        _shot(page, tmp_path / "runs.png")

        page.locator(f"tr.run-row[data-run='{incident.run.id}'] a.run-link").click()
        expect(page).to_have_url(f"{live_server.url}/runs/{incident.run.id}")
        expect(page.locator("table#tree tr.step")).to_have_count(5)
        expect(page.locator("#replay-cmd")).to_have_value(
            f"replayable replay {incident.run.id} --import replayable.demo.agent "
            f"--store {incident.store.url}"
        )
        bars = page.locator("td.timeline .bar")
        expect(bars).to_have_count(5)
        assert bars.nth(0).bounding_box()["width"] > bars.nth(4).bounding_box()["width"]

        delete = page.locator("tr.step[data-name='delete_record']")
        delete.locator(".step-name").click()
        detail = page.locator("tr.detail-row .step-detail")
        expect(detail).to_be_visible()
        expect(detail).to_contain_text('"customer_id"')
        expect(detail).to_contain_text('"deleted": 1')
        _shot(page, tmp_path / "run.png")

        page.locator(f"a.diff-link[href$='b={incident.fixed.id}']").click()
        divergence = page.locator("#first-divergence")
        expect(divergence).to_contain_text("delete_record")
        expect(divergence).to_contain_text("A only")
        expect(page.locator("tr.pair.first")).to_contain_text("delete_record")
        expect(page.locator("tr.pair-only_a")).to_have_count(1)
        _shot(page, tmp_path / "diff.png")


class TestEscapingInTheBrowser:
    def test_a_recorded_script_never_runs(self, page: Page, store: Store) -> None:
        """A prompt carrying <script> shows as text in the tree and the expanded step."""
        payload = SCRIPT_AND_IMG
        with rp.record(store, name="xss") as run:
            shout(payload)
        with LiveServer(create_app(store)) as server:
            page.goto(f"{server.url}/runs/{run.id}")
            page.locator("tr.step .step-name").first.click()
            expect(page.locator("tr.detail-row pre.json").first).to_contain_text("<script>")
            expect(page.locator("tr.step .preview").first).to_contain_text("<img src=x")
            assert page.evaluate("window.pwned") is None


class TestForkFromHereInTheBrowser:
    def test_the_expanded_step_card_copies_its_fork_command(
        self, page: Page, live_server: LiveServer, incident: Incident
    ) -> None:
        """Expanding the model step shows 'fork from here'; its copy button copies it."""
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.goto(f"{live_server.url}/runs/{incident.run.id}")
        page.locator("tr.step[data-name='choose_record'] .step-name").click()
        command = page.locator("tr.detail-row .fork-here input.cmd")
        expect(command).to_have_value(
            f"replayable fork {incident.run.id} --import replayable.demo.agent "
            f"--at choose_record#1 --live-from --store {incident.store.url}"
        )
        button = page.locator("tr.detail-row .fork-here button.copy")
        button.click()
        expect(button).to_have_text("copied")
        assert page.evaluate("navigator.clipboard.readText()") == command.input_value()
        expect(button).to_have_text("copy fork command", timeout=5000)
