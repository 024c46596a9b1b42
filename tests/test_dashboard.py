"""The dashboard in a real headless Chromium against the running compose stack (Docker tier).

Needs Debian's chromium (`/usr/bin/chromium`, installed by .ci/test) and the playwright wheel; never
`playwright install`. Saves screenshots to tests/out/screenshots/ (ignored by git). The README's copies in
tests/screenshots/ are refreshed on purpose:
    SMARTHOME_SCREENSHOTS=tests/screenshots bash .ci/test tests/test_dashboard.py
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from support import ALL_READY, ROOT, Stack, unavailable

pytestmark = pytest.mark.docker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / os.environ.get("SMARTHOME_SCREENSHOTS", "tests/out/screenshots")
URL = "http://127.0.0.1:8080/"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        unavailable(f"no {CHROMIUM} (install Debian's chromium; .ci/test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def card(page: Page, topic: str) -> object:
    return page.locator(f'.card[data-topic="{topic}"]')


def shot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_the_dashboard_shows_the_routine_switches_the_light_and_sees_an_appliance_go(
    stack: Stack, browser: Browser
) -> None:
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60")
    stack.logs("smart-mirror").wait_for(ALL_READY)
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(URL)
    expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)
    expect(card(page, "light")).to_have_attribute("data-state", "light ON", timeout=WAIT_MS)
    expect(card(page, "coffee")).to_have_attribute("data-state", "coffee ready", timeout=WAIT_MS)
    expect(card(page, "toast")).to_have_attribute("data-state", "toast ready", timeout=WAIT_MS)
    expect(card(page, "mirror")).to_have_attribute("data-state", "coffee ready, toast ready", timeout=WAIT_MS)

    page.get_by_role("button", name="Switch light OFF").click()
    expect(card(page, "light")).to_have_attribute("data-state", "light OFF", timeout=WAIT_MS)
    expect(card(page, "coffee")).to_have_attribute("data-state", "idle", timeout=WAIT_MS)
    expect(card(page, "toast")).to_have_attribute("data-state", "idle", timeout=WAIT_MS)
    expect(card(page, "mirror")).to_have_attribute("data-state", "coffee idle, toast idle", timeout=WAIT_MS)
    stack.logs("light-switch").wait_for("LIGHT SWITCH switched OFF by web@")

    page.get_by_role("button", name="Switch light ON").click()
    expect(card(page, "mirror")).to_have_attribute("data-state", "coffee ready, toast ready", timeout=WAIT_MS)
    expect(page.locator("#log li")).not_to_have_count(0)
    shot(page, "dashboard.png")

    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.goto(URL)
    expect(card(phone, "mirror")).to_have_attribute("data-state", "coffee ready, toast ready", timeout=WAIT_MS)
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "scrolls sideways"
    shot(phone, "dashboard-phone.png")

    stack.compose("stop", "toaster")
    expect(card(page, "toast")).to_have_attribute("data-online", "false", timeout=WAIT_MS)
    expect(card(page, "coffee")).to_have_attribute("data-online", "true")
    shot(page, "dashboard-toaster-offline.png")
    stack.stop_and_check_exit_codes()
