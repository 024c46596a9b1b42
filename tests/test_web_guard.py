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
from smarthome.core.config import ConfigError, load_config
from smarthome.core.identity import Identity
from smarthome.web.forwarder import FORWARDER, MAX_COMMAND_BYTES, make_app
from smarthome.web.guard import TOKEN_REQUIRED
from support import CHROMIUM, CHROMIUM_ARGS, DEADLINE, free_port, loopback_config, unavailable, wait_until_async
from test_web import Appliances, next_error, next_event

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
        return await aiohttp_client(server), app[FORWARDER], config

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


async def test_ws_refuses_a_page_from_any_other_origin(web: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, forwarder, _ = await web(allowed_origins=["https://home.example"])
    port = client.port
    for foreign in ("http://evil.example", f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", "null"):
        assert await refused(client, headers={"Origin": foreign}) == 403, foreign
    assert len(forwarder.browsers) == 0
    assert "refused /ws from 127.0.0.1: Origin 'http://evil.example'" in caplog.text
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


async def test_beyond_loopback_ws_needs_the_access_token(web: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "web-token"
    token_file.write_text(TOKEN + "\n")
    client, forwarder, _ = await web(in_container=True, bind_host="0.0.0.0", access_token_file=str(token_file))
    for query in ("", "?token=", "?token=correct-horse", f"?token={TOKEN}x"):
        ws = await client.ws_connect(f"/ws{query}")
        assert await closed_with(ws) == (TOKEN_REQUIRED, "access token required"), query
    assert len(forwarder.browsers) == 0
    ws = await client.ws_connect(f"/ws?token={TOKEN}")
    await ws.send_str(COMMAND % "ON")  # answered, so it is in: no light switch runs in this test
    assert (await next_error(ws))["body"] == {"error": "no light switch is listening"}


async def test_binding_beyond_loopback_without_a_token_is_a_config_error(
    web: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = loopback_config(tmp_path, **{"services.web.bind_host": "0.0.0.0", "services.web.token_free_peers": []})
    with pytest.raises(ConfigError, match=r"services.web.bind_host: binding 0.0.0.0 \(beyond loopback\) needs"):
        load_config(config)
    (tmp_path / "short").write_text("12345")
    with pytest.raises(ConfigError, match="short: the access token needs 16 characters or more"):
        await web(in_container=True, bind_host="0.0.0.0", access_token_file=str(tmp_path / "short"))
    # A listed peer (here the test's own loopback, as the Docker host is in compose) needs none.
    client, _, _ = await web(in_container=True, bind_host="0.0.0.0", token_free_peers=["127.0.0.0/8"])
    ws = await client.ws_connect("/ws")
    await ws.send_str(COMMAND % "ON")
    assert (await next_error(ws))["body"] == {"error": "no light switch is listening"}


async def test_browsers_are_capped_in_number(web: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, forwarder, _ = await web(max_browsers=2)
    first, _second = await client.ws_connect("/ws"), await client.ws_connect("/ws")
    assert await refused(client) == 503
    assert caplog.text.count("browsers already (max_browsers)") == 1
    await first.close()
    await wait_until_async(lambda: forwarder.guard.browsers < 2, "the closed browser's slot to free")
    await (await client.ws_connect("/ws")).close()


async def light_switch_listening(forwarder: Any, run_service: Any, config: Path) -> Any:
    """The real light switch, once the forwarder has seen it subscribe to commands."""
    light_switch = run_service("light-switch", config)
    await wait_until_async(
        lambda: forwarder.commands.listened, "the switch's subscription", describe=light_switch.output
    )
    return light_switch


async def test_commands_are_rate_limited_per_browser(web: Any, run_service: Any) -> None:
    client, forwarder, config = await web(command_rate=0.01, command_burst=3)  # no refill within the test
    light_switch = await light_switch_listening(forwarder, run_service, config)
    eager, other = await client.ws_connect("/ws"), await client.ws_connect("/ws")
    for i in range(10):
        await eager.send_str(COMMAND % ("ON", "OFF")[i % 2])
    errors = [(await next_error(eager))["body"]["error"] for _ in range(7)]
    assert errors == ["too many commands (at most 0.01 a second)"] * 7
    await other.send_str(COMMAND % "OFF")  # its own allowance; one XPUB, so it arrives after the eager ones
    await wait_until_async(
        lambda: light_switch.count("LIGHT SWITCH switched") >= 4, "4 commands", describe=light_switch.output
    )
    assert light_switch.count("LIGHT SWITCH switched") == 4  # 3 of the 10, and the other browser's one


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
    assert 0 < len(warnings) < 100, len(warnings)  # a flood costs a few lines...
    deadline = time.monotonic() + DEADLINE
    while not any("held back" in r.getMessage() for r in caplog.records):  # ...and the next says how many more
        assert time.monotonic() < deadline, "no line told of the warnings held back"
        await fuzzer.send_str("not json")
        assert (await next_error(fuzzer))["body"]["error"].startswith("bad command")
        await asyncio.sleep(0.2)  # ok: pause between polls of a deadline loop (the log allows a line a second)
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


async def test_the_page_asks_for_the_token_once_and_keeps_it_for_the_session(web: Any, tmp_path: Path) -> None:
    if not shutil.which(CHROMIUM):
        unavailable(f"no {CHROMIUM} (install Debian's chromium; .ci/test does)")
    try:
        from playwright.async_api import async_playwright, expect  # the browser tier's wheel, only here
    except ImportError:
        unavailable("no playwright wheel (pip install -e '.[test]')")
    token_file = tmp_path / "web-token"
    token_file.write_text(TOKEN)
    client, _, _ = await web(in_container=True, bind_host="0.0.0.0", access_token_file=str(token_file))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(str(client.make_url("/")))
            status, form = page.locator("#connection"), page.locator("#token-form")
            await expect(status).to_have_text("access token required")
            await page.fill("#token", "a-wrong-token-of-some-length")
            await page.click("#token-form button")
            await expect(form).to_be_visible()  # asked again
            await page.fill("#token", TOKEN)
            await page.click("#token-form button")
            await expect(status).to_have_text("live")
            await expect(form).to_be_hidden()
            await page.reload()  # the same tab's session: not asked again
            await expect(status).to_have_text("live")
            await expect(form).to_be_hidden()
        finally:
            await browser.close()
