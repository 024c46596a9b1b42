"""The dashboard answers only its own page: the forwarder as an attacker meets it, on real loopback sockets.

Browsers are aiohttp WebSocket clients (the Origin header is what a browser would send from that page); raw
sockets play what no HTTP client would send (no Host, half a request). The light switch, where commands go,
is the real service process, so "nothing published" is read from its own log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq.asyncio
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer
from smarthome.core.config import load_config
from smarthome.core.identity import Identity
from smarthome.core.limits import TokenBucket
from smarthome.core.logs import LINES_PER_SECOND
from smarthome.web.forwarder import FORWARDER, MAX_COMMAND_BYTES, make_app
from smarthome.web.guard import GUESSES_BURST, TOKEN_COOKIE, TOKEN_REQUIRED

from tests.support.base import DEADLINE, unavailable, wait_until_async
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.peers import as_page, dashboard_token
from tests.support.processes import free_port, loopback_config
from tests.test_web import Appliances, next_error, next_event

TOKEN = "correct-horse-battery-staple-42"
COMMAND = '{"command": "light", "state": "%s"}'


@pytest.fixture
def web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any) -> Any:
    """web(**changes) -> (client, forwarder, config): the forwarder app with `changes` to its config section."""

    async def start(in_container: bool = False, **changes: Any) -> tuple[Any, Any, Path]:
        web_changes = {f"services.web.{key}": value for key, value in changes.items()}
        config = loopback_config(tmp_path, curve=False, **web_changes)  # test publishers play any sender
        monkeypatch.setenv("SMARTHOME_LOOPBACK", "1")  # endpoints on 127.0.0.1
        loaded = load_config(config)
        if in_container:  # as `smarthome run web` in its container: the configured bind_host, not loopback
            monkeypatch.delenv("SMARTHOME_LOOPBACK")
        app = make_app(Identity("web", loaded), loaded.services["web"])
        server = TestServer(app)  # started here: aiohttp_client would drop the runner's options
        await server.start_server(**app[FORWARDER].guard.server_options())
        # Every request as the dashboard's own page sends it (its Origin, its token cookie), unless a test says.
        client = await aiohttp_client(server, headers=as_page(f"http://127.0.0.1:{server.port}", config))
        return client, app[FORWARDER], config

    return start


async def raw_http(port: int, request: bytes) -> bytes:
    """Send `request` bytes as they are and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()


async def refused(client: Any, **kwargs: Any) -> int:
    """The HTTP status a /ws handshake is refused with (fails if it is accepted)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
        await client.ws_connect("/ws", **kwargs)
    return refusal.value.status


async def closed_with(ws: Any) -> tuple[int, str]:
    """Read a socket until the server closes it: (close code, reason)."""
    while (frame := await asyncio.wait_for(ws.receive(), DEADLINE)).type not in (WSMsgType.CLOSE, WSMsgType.CLOSED):
        pass
    return frame.data, frame.extra


async def test_ws_refuses_a_page_from_any_other_origin_and_a_client_with_none(
    web: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, forwarder, config = await web(allowed_origins=["https://home.example"])
    port = client.port
    for foreign in ("http://evil.example", f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", "null"):
        assert await refused(client, headers={"Origin": foreign}) == 403, foreign
    async with aiohttp.ClientSession() as keyless:  # a local process: no page, so no Origin (its token right)
        cookie = {"Cookie": as_page("", config)["Cookie"]}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
            await keyless.ws_connect(client.make_url("/ws"), headers=cookie)
        assert refusal.value.status == 403
    assert len(forwarder.browsers) == 0
    assert "refused /ws from 127.0.0.1: Origin 'http://evil.example'" in caplog.text
    assert "refused /ws from 127.0.0.1: Origin 'None'" in caplog.text
    for own in (f"http://127.0.0.1:{port}", "https://home.example"):  # where it was reached; the listed one
        ws = await client.ws_connect("/ws", headers={"Origin": own})
        await ws.close()


async def test_every_route_refuses_a_foreign_host_and_a_missing_host_is_a_clean_400(
    web: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, _, _ = await web(allowed_hosts=["home.example"])
    port = client.port
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", "[::2]", ""):
        for path in ("/", "/ws", "/healthz", "/static/app.js"):
            answer = await raw_http(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 403 "), (host, path, answer[:80])
    for request in (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET /healthz HTTP/1.0\r\n\r\n"):
        answer = await raw_http(port, request)
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request") and b"Host" in answer, answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "a traceback was logged"
    for host in (f"127.0.0.1:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "home.example"):
        answer = await raw_http(port, f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 200 "), (host, answer[:80])


async def test_every_response_carries_csp_and_the_other_security_headers(web: Any) -> None:
    client, _, _ = await web()
    for path, status in (("/", 200), ("/static/app.js", 200), ("/healthz", 200), ("/nowhere", 404)):
        response = await client.get(path)
        assert response.status == status
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, (path, csp)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    refusal = await client.get("/", headers={"Host": "evil.example"})
    assert refusal.status == 403 and "frame-ancestors 'none'" in refusal.headers["Content-Security-Policy"]


async def test_ws_needs_the_access_token_on_loopback_too(web: Any) -> None:
    client, forwarder, config = await web()
    token = dashboard_token(config)
    page = {"Origin": f"http://127.0.0.1:{client.port}"}  # the page, its cookie not (yet) set
    for query, cookie in (("", ""), ("?token=", ""), ("?token=correct-horse", ""), (f"?token={token}x", ""), ("", "x")):
        headers = {**page, "Cookie": f"{TOKEN_COOKIE}={cookie}"} if cookie else page
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(client.make_url(f"/ws{query}"), headers=headers)
            assert await closed_with(ws) == (TOKEN_REQUIRED, "access token required"), (query, cookie)
    assert len(forwarder.browsers) == 0
    async with aiohttp.ClientSession() as session:  # a script: the token in the address
        ws = await session.ws_connect(client.make_url(f"/ws?token={token}"), headers=page)
        await ws.send_str(COMMAND % "ON")  # answered, so it is in: no light switch runs in this test
        assert (await next_error(ws))["body"] == {"error": "no light switch is listening"}
    ws = await client.ws_connect("/ws")  # a page: the token as its cookie
    await ws.send_str(COMMAND % "ON")
    assert (await next_error(ws))["body"] == {"error": "no light switch is listening"}


async def test_the_address_with_the_token_sets_a_strict_cookie_and_guesses_are_slowed(
    web: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, _, config = await web()
    token = dashboard_token(config)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        signed_in = await session.get(client.make_url(f"/?token={token}"), allow_redirects=False)
        assert (signed_in.status, signed_in.headers["Location"]) == (303, "/")
        cookie = signed_in.headers["Set-Cookie"]
        assert cookie.startswith(f"{TOKEN_COOKIE}={token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "frame-ancestors 'none'" in signed_in.headers["Content-Security-Policy"]
        for i in range(GUESSES_BURST):  # each wrong guess sends the page back to ask again, and is counted
            wrong = await session.get(client.make_url(f"/?token=guess-{i}"), allow_redirects=False)
            assert (wrong.status, wrong.headers["Location"], "Set-Cookie" in wrong.headers) == (
                303,
                "/?wrong-token",
                False,
            )
        slowed = await session.get(client.make_url(f"/?token={token}"), allow_redirects=False)
        assert slowed.status == 429  # past the burst even the right token waits: guessing is one a second
    assert caplog.text.count("refused 127.0.0.1: wrong access token") == GUESSES_BURST
    deadline = time.monotonic() + DEADLINE
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        while (again := await session.get(client.make_url(f"/?token={token}"), allow_redirects=False)).status == 429:
            assert time.monotonic() < deadline, "guessing never allowed again"
            await asyncio.sleep(0.2)  # ok: pause between polls of a deadline loop
        assert again.status == 303 and again.headers["Location"] == "/"


async def test_browsers_are_capped_in_number_and_per_address(web: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, forwarder, config = await web(max_browsers=3, browsers_per_address=2)
    first, _second = await client.ws_connect("/ws"), await client.ws_connect("/ws")
    assert await refused(client) == 503
    assert caplog.text.count("refused /ws from 127.0.0.1: 2 browsers from there already (browsers_per_address)") == 1
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # another client: another address
    async with aiohttp.ClientSession(connector=other, headers=as_page(f"http://127.0.0.1:{client.port}", config)) as s:
        _third = await s.ws_connect(client.make_url("/ws"))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
            await s.ws_connect(client.make_url("/ws"))
        assert refusal.value.status == 503  # 3 in all
        assert "refused /ws from 127.0.0.2: 3 browsers already (max_browsers)" in caplog.text
        await first.close()
        await wait_until_async(lambda: forwarder.guard.browsers.get("127.0.0.1") == 1, "a slot to free")
        await (await client.ws_connect("/ws")).close()


async def test_a_connection_that_answers_no_ping_loses_its_slot(web: Any) -> None:
    client, forwarder, _ = await web(ping_interval=0.2, browsers_per_address=1)
    squatter = await client.ws_connect("/ws", autoping=False)  # never answers a ping
    assert await refused(client) == 503  # it holds the one slot
    while (frame := await asyncio.wait_for(squatter.receive(), DEADLINE)).type == WSMsgType.PING:
        pass
    assert frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), frame
    await wait_until_async(lambda: not forwarder.guard.browsers, "the squatter's slot to free")
    page = await client.ws_connect("/ws")  # a page answers pings by itself: it stays
    await asyncio.sleep(0.6)  # ok: three ping intervals, to see it kept
    assert not page.closed
    await page.close()


async def light_switch_listening(forwarder: Any, run_service: Any, config: Path) -> Any:
    """The real light switch, once the forwarder has seen it subscribe to commands."""
    light_switch = run_service("light-switch", config)
    await wait_until_async(
        lambda: forwarder.commands.listened, "the switch's subscription", describe=light_switch.output
    )
    return light_switch


async def test_commands_are_rate_limited_per_client_whatever_its_connections(web: Any, run_service: Any) -> None:
    client, forwarder, config = await web(command_rate=0.01, command_burst=3)  # no refill within the test
    light_switch = await light_switch_listening(forwarder, run_service, config)
    for attempt in range(3):  # reconnecting buys nothing: the allowance is the client's
        eager = await client.ws_connect("/ws")
        for i in range(4):
            await eager.send_str(COMMAND % ("ON", "OFF")[i % 2])
        errors = [(await next_error(eager))["body"]["error"] for _ in range(4 if attempt else 1)]
        assert set(errors) == {"too many commands (at most 0.01 a second)"}, errors
        await eager.close()
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # another client has its own allowance
    async with aiohttp.ClientSession(connector=other, headers=as_page(f"http://127.0.0.1:{client.port}", config)) as s:
        await (await s.ws_connect(client.make_url("/ws"))).send_str(COMMAND % "OFF")
        await wait_until_async(
            lambda: light_switch.count("LIGHT SWITCH switched") >= 4, "4 commands", describe=light_switch.output
        )
    assert light_switch.count("LIGHT SWITCH switched") == 4  # 3 of the 12, and the other client's one


def bad_frames(rng: random.Random, count: int) -> list[str | bytes]:
    """Frames no page of ours sends: random bytes and text, wrong types, deep or odd JSON, huge numbers."""
    structured = [
        "",
        "null",
        "[]",
        '"light"',
        "1e999999",
        "123456789012345678901234567890",
        '{"command": 1, "state": "ON"}',
        '{"command": "light", "state": null}',
        '{"command": "light", "state": "ON", "extra": 1}',
        '{"command": "light", "state": "ON"',
        '{"command": "light\\u0000\\n\\u001b[31m", "state": "ON"}',
        '{"command": "light", "state": ' + "[" * 480 + "]" * 480 + "}",
        "[" * 1000,
        "{" * (MAX_COMMAND_BYTES - 10),
        '{"a":' * 150 + "1" + "}" * 150,
        "\ud7ff\x00\x1b[2J",
    ]
    frames: list[str | bytes] = []
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            frames.append(rng.choice(structured))
        elif kind == 1:
            frames.append(rng.randbytes(rng.randrange(1, 300)))
        elif kind == 2:
            frames.append("".join(chr(rng.randrange(1, 0xD7FF)) for _ in range(rng.randrange(1, 100))))
        else:
            frames.append(json.dumps({"command": "light", "state": rng.random(), "n": [rng.random()] * 5}))
    return frames


async def test_no_bad_frame_ends_a_handler_or_a_task_and_a_real_command_still_works(
    web: Any, run_service: Any, zmq_context: zmq.asyncio.Context, caplog: pytest.LogCaptureFixture
) -> None:
    client, forwarder, config = await web(command_rate=100_000, command_burst=100_000, client_queue=100_000)
    appliances = Appliances(zmq_context, config)
    await appliances.subscribed()
    light_switch = await light_switch_listening(forwarder, run_service, config)
    caplog.set_level(logging.WARNING)
    fuzzer = await client.ws_connect("/ws")
    flooded = time.monotonic()
    frames = bad_frames(random.Random(8), 10_000)
    for frame in frames:
        await (fuzzer.send_str(frame) if isinstance(frame, str) else fuzzer.send_bytes(frame))
    errors = 0
    while errors < len(frames):  # every frame answered with an error event, in order, the handler alive
        errors += (await next_event(fuzzer))["topic"] == "error"
    # Frames the protocol forbids end that one connection, as they must; each on a connection of its own.
    for send, code in (
        (lambda ws: ws.send_str("x" * (MAX_COMMAND_BYTES + 1)), 1009),  # too big
        (lambda ws: ws.send_frame(b"\xff\xfe", WSMsgType.TEXT), 1007),  # text that is not UTF-8
    ):
        victim = await client.ws_connect("/ws")
        await send(victim)
        assert (await closed_with(victim))[0] == code
    warnings = [r for r in caplog.records if r.name == "smarthome.web.guard"]
    seconds = time.monotonic() - flooded
    # A flood costs a few lines (the allowance is per whole second: one that spans two seconds gets two)...
    assert 0 < len(warnings) <= (seconds + 2) * LINES_PER_SECOND, len(warnings)
    deadline = time.monotonic() + DEADLINE
    while not any("held back" in r.getMessage() for r in caplog.records):  # ...and the next says how many more
        assert time.monotonic() < deadline, "no line told of the warnings held back"
        await fuzzer.send_str("not json")
        assert (await next_error(fuzzer))["body"]["error"].startswith("bad command")
        await asyncio.sleep(0.2)  # ok: pause between polls of a deadline loop (the log allows ten lines a second)
    warnings = [r for r in caplog.records if r.name == "smarthome.web.guard"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an exception escaped a handler"
    assert all(r.getMessage().isprintable() for r in warnings), "a control character reached the log"

    await fuzzer.send_str(COMMAND % "OFF")  # the same browser, after all that
    await wait_until_async(
        lambda: light_switch.count("switched OFF by web@"), "the command", describe=light_switch.output
    )
    assert light_switch.count("LIGHT SWITCH switched") == 1
    await appliances.send("toast", {"status": True}, sender="after-the-fuzz@test")  # the zmq side still runs
    while (event := await next_event(fuzzer))["sender"] != "after-the-fuzz@test":
        assert event["topic"] in ("error", "light"), event


async def test_a_half_sent_request_is_closed_after_header_timeout(tmp_path: Path, run_service: Any) -> None:
    port = free_port()
    config = loopback_config(tmp_path, **{"services.web.header_timeout": 0.5, "services.web.port": port})
    web = run_service("web", config)
    await wait_until_async(lambda: web.count("WEB started"), "the web service", describe=web.output)
    for trickle in (False, True):  # silent after half the headers, or a byte at a time (slowloris)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + DEADLINE
        while not reader.at_eof():
            assert time.monotonic() < deadline, "the half-sent request was never closed"
            if trickle and not writer.is_closing():
                writer.write(b"X")
            with contextlib.suppress(TimeoutError, ConnectionError):
                assert await asyncio.wait_for(reader.read(1024), 0.1) == b""  # closed, never answered
        writer.close()
    answer = await raw_http(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_the_page_asks_for_the_token_and_keeps_it_as_a_cookie(web: Any) -> None:
    if not shutil.which(CHROMIUM):
        unavailable(f"no {CHROMIUM} (install Debian's chromium; .ci/test does)")
    try:
        from playwright.async_api import async_playwright, expect  # the browser tier's wheel, only here
    except ImportError:
        unavailable("no playwright wheel (pip install -e '.[test]')")
    client, _, config = await web()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(str(client.make_url("/")))
            status, form = page.locator("#connection"), page.locator("#token-form")
            await expect(status).to_have_text("access token required")
            await page.fill("#token", "a-wrong-token-of-some-length")
            await page.click("#token-form button")
            await expect(status).to_have_text("wrong access token")
            await expect(form).to_be_visible()  # asked again
            await page.fill("#token", dashboard_token(config))
            await page.click("#token-form button")
            await expect(status).to_have_text("live")
            await expect(form).to_be_hidden()
            assert "token" not in page.url  # the token is not left in the address bar or the history
            cookies = await page.context.cookies()
            assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [(TOKEN_COOKIE, True, "Strict")]
            assert await page.evaluate("document.cookie") == ""  # no script of the page can read it
            await page.reload()  # kept: not asked again
            await expect(status).to_have_text("live")
            await expect(form).to_be_hidden()
        finally:
            await browser.close()


def test_a_token_bucket_allows_its_burst_then_its_rate_and_never_more_than_its_burst() -> None:
    now = [100.0]
    bucket = TokenBucket(2, 3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # 2 a second: exactly one more
    assert bucket.take() and not bucket.take()
    now[0] += 0.4  # 0.8 of one: not yet
    assert bucket.empty() and not bucket.take()
    now[0] += 3600  # an idle hour gives back the burst, no more
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
