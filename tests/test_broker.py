"""Broker wiring and the host-side tools, over real sockets on loopback (no Docker)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
import zmq
from smarthome.core.envelope import Message, encode
from support import (
    ALL_IDLE,
    ALL_READY,
    BROKER_CONFIG,
    DEADLINE,
    ServiceProcess,
    endpoint,
    loopback_config,
    smarthome,
    wait_until,
    wait_until_async,
)

Start = Callable[..., ServiceProcess]
ROUTINE = ["broker", "light-switch", "kitchen-light", "coffee-maker", "toaster", "smart-mirror", "radio"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return loopback_config(
        tmp_path, BROKER_CONFIG, **{"services.coffee-maker.prep_time": 0.1, "services.toaster.prep_time": 0}
    )


@pytest.fixture
def context() -> zmq.Context:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_every_subscriber_hears_every_publisher_through_the_broker(config: Path, run_service: Start) -> None:
    # Subscribers first and the broker last: every connection has to be retried and still work.
    services = {name: run_service(name, config) for name in reversed(ROUTINE)}
    radio = services["radio"]
    radio.wait_for("from light-switch@")
    radio.wait_for("from kitchen-light@")
    radio.wait_for("RADIO playing")
    for appliance in ("coffee-maker", "toaster"):  # one line per switch: re-sends of one switch are dropped
        services[appliance].wait_for("received 'light is ON' from light.", times=2)
    services["smart-mirror"].wait_for(ALL_READY)
    broker = services["broker"]
    broker.wait_for("BROKER subscribe 'light'", times=3)  # coffee maker, toaster, radio
    broker.wait_for("BROKER subscribe 'coffee'")


def test_the_broker_hands_the_last_value_to_late_subscribers(
    config: Path, run_service: Start, context: zmq.Context
) -> None:
    broker = run_service("broker", config)
    broker.wait_for("started")
    publisher = context.socket(zmq.PUB)
    publisher.connect(endpoint(config, "broker", "publishers"))
    probe = context.socket(zmq.SUB)  # proves the broker has the message before the publisher goes away
    probe.subscribe(b"")
    probe.connect(endpoint(config, "broker", "subscribers"))
    broker.wait_for("subscribe all topics")
    old = encode(Message("toast", "gone@test", 1, 1, time.time(), {"status": False}))
    other = encode(Message("coffee", "gone@test", 1, 2, time.time(), {"status": True}))
    alive = encode(Message("heartbeat", "gone@test", 1, 3, time.time(), {"for": "toast"}))
    last = encode(Message("toast", "gone@test", 1, 4, time.time(), {"status": True}))

    def sent_and_seen() -> bool:  # PUB drops until connected: send until the probe sees the last message
        for frames in (old, other, alive, last):
            publisher.send_multipart(frames)
        seen = []
        while probe.poll(100):
            seen.append(probe.recv_multipart())
        return last in seen

    wait_until(sent_and_seen, "the broker to forward a message")
    publisher.close()

    late = context.socket(zmq.SUB)
    late.subscribe(b"toast")
    late.connect(endpoint(config, "broker", "subscribers"))
    assert late.poll(10_000), "no last value for a late subscriber"
    assert late.recv_multipart() == last  # only the newest 'toast', nothing of 'coffee'
    assert not late.poll(200)  # ok to wait briefly here: asserting that nothing more arrives

    everything = context.socket(zmq.SUB)
    everything.subscribe(b"")
    everything.connect(endpoint(config, "broker", "subscribers"))
    got = [everything.recv_multipart() for _ in range(2) if everything.poll(10_000)]
    assert sorted(got) == sorted([other, last])  # the last of each topic; no stale heartbeat
    assert not everything.poll(200)  # ok to wait briefly here: asserting that nothing more arrives

    late.close()
    broker.wait_for("BROKER unsubscribe 'toast'")


def test_host_tools_switch_the_light_and_see_the_stream(config: Path, run_service: Start) -> None:
    services = {name: run_service(name, config) for name in ROUTINE}
    mirror = services["smart-mirror"]
    mirror.wait_for(ALL_READY)

    watcher = run_service("sub", config, "sub", "coffee", "toast", "--count", "4", "--timeout", "30")
    watcher.wait_for('{"status": true}', times=2)  # the current states, handed to a newcomer
    off = smarthome(config, "light", "off")
    assert (off.returncode, off.stderr) == (0, "")
    mirror.wait_for(ALL_IDLE)
    services["radio"].wait_for("RADIO silent")
    assert watcher.wait_exit() == 0  # after its 4 messages
    topics = sorted(line.split()[0] for line in watcher.lines)
    assert topics == ["coffee", "coffee", "toast", "toast"]
    assert [json.loads(line.split(" ", 3)[3]) for line in watcher.lines[2:]] == [{"status": False}] * 2

    assert smarthome(config, "light", "on").returncode == 0
    mirror.wait_for(ALL_READY, times=2)
    published = smarthome(config, "pub", "toast", '{"status": false}')
    assert published.returncode == 0
    mirror.wait_for("toast@")  # a second 'toast' sender appeared: the tool's own message


def test_direct_wiring_takes_light_commands_too(tmp_path: Path, run_service: Start) -> None:
    config = loopback_config(tmp_path, **{"services.coffee-maker.prep_time": 0, "services.toaster.prep_time": 0})
    services = {name: run_service(name, config) for name in ("light-switch", "coffee-maker", "toaster", "smart-mirror")}
    services["smart-mirror"].wait_for(ALL_READY)
    assert smarthome(config, "light", "off").returncode == 0
    services["light-switch"].wait_for("LIGHT SWITCH switched OFF by smarthome-cli@")
    services["smart-mirror"].wait_for(ALL_IDLE)
    sub = smarthome(config, "sub", "light", "--count", "1", "--timeout", "10")
    assert sub.returncode == 0
    topic, sender, seq, body = sub.stdout.strip().split(" ", 3)
    assert (topic, sender.split("@")[0], seq, json.loads(body)) == ("light", "light-switch", "2", {"state": "OFF"})


BAD_ARGUMENTS = {
    "invalid JSON": (["pub", "light-set", '{"state": '], 1, "smarthome: invalid JSON body: Expecting value"),
    "JSON not an object": (["pub", "light-set", "[1]"], 1, "smarthome: the body must be a JSON object, got: [1]"),
    "unknown topic": (["pub", "lamp", "{}"], 1, "smarthome: unknown topic 'lamp' (known: coffee, light, light-set"),
    "unknown sub topic": (["sub", "lamp"], 1, "smarthome: unknown topic 'lamp'"),
    "nobody there": (
        ["pub", "light-set", '{"state": "ON"}', "--timeout", "0.5"],
        1,
        "smarthome: nothing at tcp://127.0.0.1:",
    ),
    "bad light state": (["light", "dim"], 2, "smarthome light: error: argument state: invalid choice: 'dim'"),
    "missing argument": (["pub", "light-set"], 2, "smarthome pub: error: the following arguments are required: JSON"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=list(BAD_ARGUMENTS))
def test_bad_arguments_give_one_line_and_a_nonzero_exit(config: Path, case: str) -> None:
    args, code, message = BAD_ARGUMENTS[case]
    result = smarthome(config, *args)
    assert result.returncode == code
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr


def test_pub_in_direct_wiring_says_where_it_cannot_publish(tmp_path: Path) -> None:
    result = smarthome(loopback_config(tmp_path), "pub", "coffee", "{}")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "smarthome: in this wiring nothing accepts messages on 'coffee' from outside; use the broker wiring"
    )


async def test_the_dashboard_knows_when_no_light_switch_listens_through_the_broker(
    config: Path, run_service: Start
) -> None:
    # The broker forwards every subscription upstream, catch-alls too (the web's own, a `smarthome sub`):
    # none of them is a light switch, so a command must be refused rather than published into the void.
    broker, web = run_service("broker", config), run_service("web", config)
    web.wait_for("WEB started")
    broker.wait_for("subscribe all topics")
    url = f"http://127.0.0.1:{yaml.safe_load(config.read_text())['services']['web']['port']}/ws"

    async def command_reply(ws: aiohttp.ClientWebSocketResponse) -> dict:
        """Send OFF; the reply is an error event, or (with a switch listening) the light going OFF."""
        await ws.send_str('{"command": "light", "state": "OFF"}')
        while True:
            event = json.loads((await asyncio.wait_for(ws.receive(), DEADLINE)).data)
            if event["topic"] == "error" or (event["topic"], event["body"]) == ("light", {"state": "OFF"}):
                return event

    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await command_reply(ws))["body"] == {"error": "no light switch is listening"}
        switch = run_service("light-switch", config)
        subscribed = "BROKER subscribe 'light-set'"
        await wait_until_async(lambda: broker.count(subscribed), "the switch to subscribe", describe=broker.output)
        assert (await command_reply(ws))["topic"] == "light"
        await wait_until_async(lambda: switch.count("switched OFF by web@"), "the switch's log", describe=switch.output)
        assert switch.stop() == 0
        left = "BROKER unsubscribe 'light-set'"
        await wait_until_async(lambda: broker.count(left), "the switch to leave", describe=broker.output)
        assert (await command_reply(ws))["body"] == {"error": "no light switch is listening"}
