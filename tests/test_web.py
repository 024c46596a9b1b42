"""The WebSocket forwarder with aiohttp's test client, over real zmq sockets on loopback.

The test plays the publishers (an XPUB where the forwarder connects); the light switch, where commands
go, is the real service process; browsers are aiohttp WebSocket clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiohttp import WSMsgType
from smarthome.core.asyncio_loop import AsyncioLoop
from smarthome.core.config import load_config
from smarthome.core.envelope import Message, encode
from smarthome.core.identity import Identity
from smarthome.core.keys import KeyRing
from smarthome.web.forwarder import FORWARDER, make_app

from tests.support.base import DEADLINE, SHIPPED_CONFIG, wait_until_async
from tests.support.peers import as_page
from tests.support.processes import endpoint, free_port, loopback_config


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SMARTHOME_LOOPBACK", "1")
    # One test publisher plays many senders, which CurveZMQ's policy would rightly refuse: these tests are about
    # the forwarder's fan-out; keys and the policy are tested in test_security.py.
    changes = {"services.web.client_queue": 64, "services.web.command_burst": 20}
    return loopback_config(tmp_path, heartbeat_interval=0.1, offline_after=3, curve=False, **changes)


class Appliances:
    """The publishers the forwarder connects to, played by one XPUB on the coffee maker's endpoint."""

    def __init__(self, context: zmq.asyncio.Context, config: Path) -> None:
        self.sock = context.socket(zmq.XPUB)
        self.sock.bind(endpoint(config, "coffee-maker"))
        self.seqs: dict[tuple[str, str], int] = {}  # (sender, topic) -> seq of its newest message [M5]
        self.seq = 0  # the seq of the message sent last

    async def subscribed(self) -> None:
        assert await asyncio.wait_for(self.sock.recv(), DEADLINE) == b"\x01"  # the forwarder takes every topic

    async def send(self, topic: str, body: dict[str, Any], sender: str = "toaster@test") -> None:
        """A message; a heartbeat carries the newest seq of the topic it is `for` without consuming one [P1]."""
        if topic == "heartbeat":
            seq = self.seqs.get((sender, body["for"]), 0)
        else:
            seq = self.seqs[sender, topic] = self.seqs.get((sender, topic), 0) + 1
        self.seq = seq
        await self.sock.send_multipart(encode(Message(topic, sender, 1, seq, time.time(), body)))


@pytest.fixture
async def site(config: Path, zmq_context: zmq.asyncio.Context, aiohttp_client: Any) -> Any:
    """(client factory, appliances, forwarder): the forwarder app running, its subscription in place."""
    appliances = Appliances(zmq_context, config)
    app = make_app(Identity("web", load_config(config)), load_config(config).services["web"])
    port = free_port()  # known before the client is made: its every request comes as from the dashboard's page
    client = await aiohttp_client(
        app, server_kwargs={"port": port}, headers=as_page(f"http://127.0.0.1:{port}", config)
    )
    await appliances.subscribed()
    return client, appliances, app[FORWARDER]


async def next_event(ws: Any, skip_presence: bool = True) -> dict[str, Any]:
    while True:
        frame = await asyncio.wait_for(ws.receive(), DEADLINE)
        assert frame.type == WSMsgType.TEXT, frame
        event = json.loads(frame.data)
        if not (skip_presence and event["topic"] == "presence"):
            return event


async def next_error(ws: Any) -> dict[str, Any]:
    """The next error event; the switch's own light messages may come in between."""
    while (event := await next_event(ws))["topic"] != "error":
        pass
    return event


async def test_every_browser_gets_every_message(site: Any) -> None:
    client, appliances, _ = site
    first, second = await client.ws_connect("/ws"), await client.ws_connect("/ws")
    for i in range(20):
        await appliances.send("toast", {"status": i % 2 == 0})
    for ws in (first, second):
        events = [await next_event(ws) for _ in range(20)]
        assert [e["seq"] for e in events] == list(range(1, 21))
        assert set(events[0]) == {"topic", "sender", "seq", "ts", "body"}
        assert events[0]["topic"] == "toast" and events[0]["body"] == {"status": True}


async def test_a_new_browser_starts_with_the_current_state(site: Any) -> None:
    client, appliances, _ = site
    early = await client.ws_connect("/ws")
    await appliances.send("light", {"state": "ON"}, sender="light-switch@test")
    await appliances.send("toast", {"status": True})
    assert (await next_event(early))["topic"] == "light"
    assert (await next_event(early))["topic"] == "toast"  # both have reached the forwarder now
    late = await client.ws_connect("/ws")
    topics = {(await next_event(late))["topic"] for _ in range(2)}
    assert topics == {"light", "toast"}


async def test_bodies_reach_browsers_in_their_typed_form_and_one_of_another_type_does_not(
    site: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, appliances, forwarder = site
    ws = await client.ws_connect("/ws")
    await appliances.send("toast", {"status": True, "padding": "x" * 50_000})
    assert (await next_event(ws))["body"] == {"status": True}  # unknown fields dropped, live and kept alike
    await appliances.send("coffee", {"status": "maybe"}, sender="odd@test")
    await appliances.send("toast", {"status": False})
    assert (event := await next_event(ws))["topic"] == "toast" and event["body"] == {"status": False}
    assert "WEB dropped a message on 'coffee': expected 'bool', got 'str' at 'body.status'" in caplog.text
    assert [len(text) < 200 for text in forwarder.latest.values()] == [True]  # one state kept, and small


async def test_a_topic_filter_narrows_what_a_browser_gets(site: Any) -> None:
    client, appliances, _ = site
    only_light = await client.ws_connect("/ws?topics=light")
    await appliances.send("toast", {"status": True})
    await appliances.send("light", {"state": "OFF"}, sender="light-switch@test")
    event = await next_event(only_light)
    assert (event["topic"], event["body"]) == ("light", {"state": "OFF"})


async def test_a_slow_browser_is_dropped_and_the_fast_one_keeps_up(site: Any) -> None:
    client, appliances, forwarder = site
    slow = await client.ws_connect("/ws")  # never reads
    fast = await client.ws_connect("/ws")
    body = {"status": True, "padding": "x" * 8000}  # fills the slow browser's socket buffers sooner
    sent = 0
    deadline = time.monotonic() + DEADLINE
    while len(forwarder.browsers) == 2:  # bounded by the deadline below
        assert time.monotonic() < deadline, "the slow browser was never dropped"
        for _ in range(20):
            await appliances.send("toast", body)
            sent += 1
        for _ in range(20):  # the fast browser reads everything before the next batch
            assert (await next_event(fast))["seq"] == appliances.seq - 19 + _
    assert len(forwarder.browsers) == 1
    await appliances.send("toast", {"status": False})
    assert (await next_event(fast))["body"] == {"status": False}  # still served after the drop
    while (frame := await asyncio.wait_for(slow.receive(), DEADLINE)).type == WSMsgType.TEXT:
        pass  # what it had buffered, then the close
    assert frame.type == WSMsgType.CLOSE
    assert frame.data == 1013 and "too slow" in frame.extra


async def test_commands_are_validated_and_errors_go_to_that_browser_only(
    site: Any, config: Path, run_service: Any
) -> None:
    client, appliances, forwarder = site
    sender, bystander = await client.ws_connect("/ws"), await client.ws_connect("/ws")
    await sender.send_str('{"command": "light", "state": "OFF"}')
    assert (await next_error(sender))["body"] == {"error": "no light switch is listening"}

    light_switch = run_service("light-switch", config)  # the real one: its commands socket binds
    await wait_until_async(
        lambda: forwarder.commands.listened, "the switch's subscription", describe=light_switch.output
    )
    for bad, reason in (
        ("not json", "bad command: JSON is malformed"),
        ('{"command": "lamp", "state": "ON"}', "bad command: unknown command 'lamp'"),
        ('{"command": "light", "state": "DIM"}', "bad command: Invalid enum value 'DIM'"),
        ('{"command": "light"}', "bad command: Object missing required field `state`"),
    ):
        await sender.send_str(bad)
        event = await next_error(sender)
        assert event["body"]["error"].startswith(reason), event

    await sender.send_str('{"command": "light", "state": "OFF"}')
    await wait_until_async(
        lambda: light_switch.count("switched OFF by web@"), "the switch", describe=light_switch.output
    )
    assert light_switch.count("switched") == 1  # none of the bad commands was published

    await appliances.send("toast", {"status": True}, sender="sentinel@test")
    while (event := await next_event(bystander))["sender"] != "sentinel@test":
        assert event["topic"] != "error"  # errors went to the sender only


async def test_senders_go_offline_when_heartbeats_stop_and_online_when_they_return(site: Any) -> None:
    client, appliances, _ = site
    ws = await client.ws_connect("/ws")
    await appliances.send("heartbeat", {"for": "toast"})
    assert (await next_event(ws, skip_presence=False))["body"] == {
        "sender": "toaster@test",
        "online": True,
        "missed": 0,
    }
    # No more heartbeats: after 3 missed intervals of 0.1 s the forwarder says so.
    assert (await next_event(ws, skip_presence=False))["body"] == {
        "sender": "toaster@test",
        "online": False,
        "missed": 0,
    }
    await appliances.send("heartbeat", {"for": "toast"})
    assert (await next_event(ws, skip_presence=False))["body"] == {
        "sender": "toaster@test",
        "online": True,
        "missed": 0,
    }


async def test_a_gap_in_what_a_sender_sent_shows_on_every_page(site: Any) -> None:
    client, appliances, _ = site
    ws = await client.ws_connect("/ws")

    async def presence() -> tuple[bool, int]:
        body = (await next_event(ws, skip_presence=False))["body"]
        assert body["sender"] == "toaster@test"
        return body["online"], body["missed"]

    await appliances.send("toast", {"status": True})
    assert await presence() == (True, 0)
    assert (await next_event(ws))["seq"] == 1
    appliances.seqs["toaster@test", "toast"] += 3  # seq 2, 3 and 4 lost on the way
    await appliances.send("toast", {"status": False})
    assert await presence() == (True, 3)
    assert (await next_event(ws))["seq"] == 5
    assert await presence() == (False, 3)  # no heartbeat: offline, and what it missed still shown


async def test_sigterm_closes_browsers_with_going_away_and_exits_0(tmp_path: Path, run_service: Any) -> None:
    port = free_port()
    config = loopback_config(tmp_path, **{"services.web.port": port})
    web = run_service("web", config)
    await wait_until_async(lambda: web.count("WEB started"), "the web to start", describe=web.output)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"http://127.0.0.1:{port}/ws", headers=as_page(f"http://127.0.0.1:{port}", config)
        )
        web.proc.send_signal(signal.SIGTERM)
        while (frame := await asyncio.wait_for(ws.receive(), DEADLINE)).type == WSMsgType.TEXT:
            pass
        assert (frame.type, frame.data, frame.extra) == (WSMsgType.CLOSE, 1001, "server shutting down")
    assert web.stop() == 0
    assert web.lines[-1].endswith("WEB stopped")


async def test_a_background_task_that_dies_stops_the_service_as_failed(caplog: pytest.LogCaptureFixture) -> None:
    """Every task of the asyncio loop is supervised: one that dies sets `done` and `failed` (the web then exits 1),
    with a line saying which; one cancelled at a stop is no failure."""
    loop = AsyncioLoop(Identity("web", load_config(SHIPPED_CONFIG)))

    async def waits() -> None:
        await asyncio.Event().wait()

    async def dies() -> None:
        raise RuntimeError("boom")

    loop.spawn(waits())
    [waiting] = loop.tasks
    waiting.cancel()
    await asyncio.sleep(0)  # ok: one turn of the event loop, for the cancelled task's callback
    await asyncio.sleep(0)  # ok: and the next
    assert not loop.done.is_set() and not loop.failed
    loop.spawn(dies())
    await asyncio.wait_for(loop.done.wait(), DEADLINE)
    assert loop.failed
    said = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert said == ["WEB stopping: a background task died: RuntimeError('boom')"]


async def test_closing_the_asyncio_loop_ends_its_tasks_before_its_sockets_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task still reading a socket when the context is destroyed would fail, not end: each is cancelled and
    awaited first."""
    monkeypatch.setenv("SMARTHOME_KEYS", str(tmp_path / "keys"))
    loop = AsyncioLoop(Identity("web", load_config(SHIPPED_CONFIG)))
    loop.open()
    loop.watch(loop.sockets.make(zmq.PULL, bind="tcp://127.0.0.1:*"), lambda frames: None)
    loop.every(3600, lambda: None)
    await asyncio.sleep(0)  # ok: one turn of the event loop, so that the tasks are waiting
    await loop.close()
    assert len(loop.tasks) == 3 and all(task.cancelled() for task in loop.tasks)  # with the health touch
    assert not loop.failed


async def test_the_asyncio_loops_timers_and_other_threads_calls_run_on_its_loop() -> None:
    """call_later runs once after its delay unless cancelled; call_soon_threadsafe, from another thread, runs on
    the loop's own thread (a Dialer's lookups answer so)."""
    loop = AsyncioLoop(Identity("web", load_config(SHIPPED_CONFIG)))
    loop.running = asyncio.get_running_loop()
    ran: list[tuple[str, int]] = []
    started = time.monotonic()
    loop.call_later(0.05, lambda: ran.append(("later", threading.get_ident())))
    loop.call_later(0.01, lambda: ran.append(("cancelled", 0))).cancel()
    threading.Thread(
        target=loop.call_soon_threadsafe, args=[lambda: ran.append(("soon", threading.get_ident()))]
    ).start()
    await wait_until_async(lambda: len(ran) == 2, "both calls")
    assert time.monotonic() - started >= 0.05
    assert sorted(ran) == [("later", threading.get_ident()), ("soon", threading.get_ident())]


async def test_the_asyncio_loop_hands_each_message_with_the_connection_it_came_on() -> None:
    """`watch(..., source=True)` on asyncio, as on the poller: every frame, and the descriptor of its connection
    (what the per-connection subscription cap counts by [P6])."""
    loop = AsyncioLoop(Identity("web", load_config(SHIPPED_CONFIG)))
    context = zmq.asyncio.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    try:
        push.connect(f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}")
        got: list[tuple[list[bytes], int]] = []
        loop.watch(pull, lambda frames, connection: got.append((frames, connection)), source=True)
        await push.send_multipart([b"light", b"{}"])
        await push.send_multipart([b"toast", b"{}"])
        await wait_until_async(lambda: len(got) == 2, "two messages")
        assert [frames for frames, _ in got] == [[b"light", b"{}"], [b"toast", b"{}"]]
        assert got[0][1] == got[1][1] > 2  # one connection, a descriptor of its own
    finally:
        for task in loop.tasks:
            task.cancel()
        context.destroy(linger=0)


async def test_the_asyncio_loop_hands_each_message_with_the_key_its_peer_signed_in_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`watch(..., peer=True)` on asyncio: every frame, and the name of the CurveZMQ key the peer used [A1]."""
    monkeypatch.setenv("SMARTHOME_KEYS", str(tmp_path / "keys"))
    loop = AsyncioLoop(Identity("web", load_config(SHIPPED_CONFIG)))  # curve: true; the keys are made here
    loop.open()
    client = zmq.asyncio.Context()
    try:
        pull = loop.sockets.make(zmq.PULL, bind="tcp://127.0.0.1:*")
        got: list[tuple[list[bytes], str]] = []
        loop.watch(pull, lambda frames, peer: got.append((frames, peer)), peer=True)
        ring = KeyRing(tmp_path / "keys")
        push = client.socket(zmq.PUSH)
        push.curve_publickey, push.curve_secretkey = ring.pair("tools")
        push.curve_serverkey = ring.public("web")
        push.connect(pull.last_endpoint.decode())
        await push.send_multipart([b"light-set", b"{}"])
        await wait_until_async(lambda: got, "a message")
        assert got == [([b"light-set", b"{}"], "tools")]
    finally:
        client.destroy(linger=0)
        await loop.close()
