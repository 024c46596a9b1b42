"""The dashboard in a real headless Chromium against the running compose stack (Docker tier).

Needs Debian's chromium (`/usr/bin/chromium`, installed by .ci/test) and the playwright wheel; never
`playwright install`. Saves screenshots to tests/out/screenshots/ (ignored by git). The README's copies in
tests/screenshots/ are refreshed on purpose:
    SMARTHOME_SCREENSHOTS=tests/screenshots bash .ci/test tests/test_dashboard.py

The same browser then visits a page of another origin (served by the test on another 127.0.0.1 port) and a
rebinding name (evil.example, which this Chromium resolves to 127.0.0.1), as a user who opens a hostile
site while the dashboard runs: neither may read /ws nor switch the light.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.base import ALL_READY, ROOT, SHIPPED_CONFIG, unavailable
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.processes import free_port, smarthome
from tests.support.stack import Stack

pytestmark = pytest.mark.docker

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


# What a hostile page does: open /ws on every name of the dashboard, count what it reads, send a command.
ATTACK = """<!doctype html><title>not the dashboard</title><script>
window.attack = {opened: 0, read: 0, closed: [], fetched: null};
for (const url of ["ws://127.0.0.1:8080/ws", "ws://localhost:8080/ws", "ws://[::1]:8080/ws"]) {
  const ws = new WebSocket(url);
  ws.onopen = () => { attack.opened++; ws.send(JSON.stringify({command: "light", state: "OFF"})); };
  ws.onmessage = () => { attack.read++; };
  ws.onclose = (event) => { attack.closed.push(event.code); };
}
fetch("http://127.0.0.1:8080/healthz").then((r) => r.text()).then((t) => { attack.fetched = t; },
                                                                  () => { attack.fetched = "blocked"; });
</script>"""


class AttackPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(ATTACK.encode())

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def other_origin() -> Iterator[str]:
    """The URL of a page from another origin: the same 127.0.0.1, another port."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), AttackPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def card(page: Page, topic: str) -> object:
    return page.locator(f'.card[data-topic="{topic}"]')


def shot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_the_dashboard_shows_the_routine_switches_the_light_and_sees_an_appliance_go(
    stack: Stack, browser: Browser, other_origin: str
) -> None:
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60")
    stack.logs("smart-mirror").wait_for(ALL_READY)
    printed = smarthome(SHIPPED_CONFIG, "dashboard")  # the address with the token, as a user gets it
    assert printed.returncode == 0 and printed.stdout.startswith(f"{URL}?token="), printed
    address = printed.stdout.strip()
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(URL)  # without the token: the page asks for it
    expect(page.locator("#connection")).to_have_text("access token required", timeout=WAIT_MS)
    page.goto(address)
    assert page.url == URL  # the token is kept as a cookie, not in the address
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
    phone.goto(address)
    expect(card(phone, "mirror")).to_have_attribute("data-state", "coffee ready, toast ready", timeout=WAIT_MS)
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "scrolls sideways"
    shot(phone, "dashboard-phone.png")

    a_hostile_page_can_neither_read_nor_drive_the_home(stack, browser, other_origin)
    another_container_needs_the_token_too(stack)

    stack.compose("stop", "toaster")
    expect(card(page, "toast")).to_have_attribute("data-online", "false", timeout=WAIT_MS)
    expect(card(page, "coffee")).to_have_attribute("data-online", "true")
    shot(page, "dashboard-toaster-offline.png")
    stack.stop_and_check_exit_codes()


def a_hostile_page_can_neither_read_nor_drive_the_home(stack: Stack, browser: Browser, other_origin: str) -> None:
    switched = stack.logs("light-switch").count("switched")
    hostile = browser.new_page()
    hostile.goto(other_origin)
    hostile.wait_for_function("attack.closed.length === 3 && attack.fetched !== null", timeout=WAIT_MS)
    attack = hostile.evaluate("attack")
    assert attack == {"opened": 0, "read": 0, "closed": [1006] * 3, "fetched": "blocked"}, attack
    stack.logs("web").wait_for("refused /ws from")  # refused for its Origin, before any upgrade
    assert f"Origin '{other_origin.rstrip('/')}'" in stack.logs("web").last("WEB refused /ws")

    rebound = hostile.goto("http://evil.example:8080/")  # the name now points at 127.0.0.1: same-origin to it
    assert rebound is not None and rebound.status == 403
    hostile.close()
    stack.logs("web").wait_for("unknown Host 'evil.example:8080'")
    assert stack.logs("light-switch").count("switched") == switched, "a hostile page switched the light"


def another_container_needs_the_token_too(stack: Stack) -> None:
    """A container on the dashboard's network, with the page's Origin but no token, is closed with 4401."""
    probe = (
        "import asyncio, aiohttp\n"
        "async def main():\n"
        "    async with aiohttp.ClientSession() as s, s.ws_connect('http://web:8080/ws',"
        " headers={'Host': '127.0.0.1:8080', 'Origin': 'http://127.0.0.1:8080'}) as ws:\n"
        "        m = await ws.receive(); print(m.type.name, m.data)\n"
        "asyncio.run(main())\n"
    )
    out = stack.compose("exec", "-T", "light-switch", "python", "-c", probe)
    assert out.strip() == "CLOSE 4401", out
