"""Broker wiring over real sockets on loopback (no Docker); the host-side tools are in test_cli.py."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
import zmq
from smarthome.core.envelope import Message, encode
from smarthome.core.protocol import ANSWER_BURST, RESYNC_MAX

from tests.support.base import ALL_READY, BROKER_CONFIG, BROKER_ROUTINE, DEADLINE, HOST, wait_until, wait_until_async
from tests.support.peers import as_page, with_key
from tests.support.processes import ServiceProcess, endpoint, loopback_config

Start = Callable[..., ServiceProcess]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return loopback_config(
        tmp_path, BROKER_CONFIG, **{"services.coffee-maker.prep_time": 0.1, "services.toaster.prep_time": 0}
    )


def test_every_subscriber_hears_every_publisher_through_the_broker(config: Path, run_service: Start) -> None:
    # Subscribers first and the broker last: every connection has to be retried and still work.
    services = {name: run_service(name, config) for name in reversed(BROKER_ROUTINE)}
    radio = services["radio"]
    radio.says(f"RADIO heard 'light is ON' from light-switch@{HOST}")
    radio.says(f"RADIO heard 'light is ON' from kitchen-light@{HOST}")
    radio.says("RADIO playing")
    for appliance in ("coffee-maker", "toaster"):  # one line per switch: re-sends of one switch are dropped
        services[appliance].wait_for("received 'light is ON' from light.", times=2)
    services["smart-mirror"].wait_for(ALL_READY)
    broker = services["broker"]
    broker.says("BROKER subscribe 'light' from 127.0.0.1", times=3)  # coffee maker, toaster, radio
    broker.says("BROKER subscribe 'coffee' from 127.0.0.1")
    # A publisher's one subscriber is the broker, whose address it does not tell: the first of many at each.
    services["light-switch"].says(
        "BATHROOM LIGHT has a new subscriber; answering with a heartbeat and the current state"
    )


def test_the_broker_hands_the_last_value_to_late_subscribers(
    config: Path, run_service: Start, context: zmq.Context
) -> None:
    broker = run_service("broker", config)
    broker.wait_for("started")
    publisher = with_key(context.socket(zmq.PUB), config, server="broker")
    publisher.connect(endpoint(config, "broker", "publishers"))
    probe = with_key(
        context.socket(zmq.SUB), config, server="broker"
    )  # proves the broker has the message before the publisher goes away
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

    late = with_key(context.socket(zmq.SUB), config, server="broker")
    late.subscribe(b"toast")
    late.connect(endpoint(config, "broker", "subscribers"))
    assert late.poll(10_000), "no last value for a late subscriber"
    assert late.recv_multipart() == last  # only the newest 'toast', nothing of 'coffee'
    assert not late.poll(200)  # ok to wait briefly here: asserting that nothing more arrives

    everything = with_key(context.socket(zmq.SUB), config, server="broker")
    everything.subscribe(b"")
    everything.connect(endpoint(config, "broker", "subscribers"))
    got = [everything.recv_multipart() for _ in range(2) if everything.poll(10_000)]
    assert sorted(got) == sorted([other, last])  # the last of each topic; no stale heartbeat
    assert not everything.poll(200)  # ok to wait briefly here: asserting that nothing more arrives

    late.close()
    broker.says("BROKER unsubscribe 'toast'")


def test_the_broker_keeps_a_state_in_its_typed_form_and_none_it_cannot_read(
    config: Path, run_service: Start, context: zmq.Context
) -> None:  # [C1]
    broker = run_service("broker", config)
    broker.wait_for("started")
    publisher = with_key(context.socket(zmq.PUB), config, server="broker")
    publisher.connect(endpoint(config, "broker", "publishers"))
    probe = with_key(context.socket(zmq.SUB), config, server="broker")
    probe.subscribe(b"")
    probe.connect(endpoint(config, "broker", "subscribers"))
    broker.wait_for("subscribe all topics")
    padded = encode(Message("toast", "big@test", 1, 1, time.time(), {"status": True, "padding": "x" * 50_000}))
    unreadable = encode(Message("coffee", "big@test", 1, 2, time.time(), {"status": "maybe"}))
    undeclared = encode(Message("lightning", "big@test", 1, 3, time.time(), {"status": True}))
    seen: list[list[bytes]] = []

    def sent_and_seen() -> bool:  # PUB drops until connected: send until the probe sees both, as they were sent
        for frames in (padded, unreadable, undeclared):
            publisher.send_multipart(frames)
        while probe.poll(100):
            seen.append(probe.recv_multipart())
        return padded in seen and unreadable in seen

    wait_until(sent_and_seen, "the broker to forward both")
    broker.says("BROKER dropped a message on 'lightning': not a declared topic")  # [K1] and not passed on
    assert undeclared not in seen
    broker.says(
        "BROKER keeps no message it could not read: topic 'coffee': expected 'bool', got 'str' at 'body.status'"
    )
    late = with_key(context.socket(zmq.SUB), config, server="broker")
    late.subscribe(b"")
    late.connect(endpoint(config, "broker", "subscribers"))
    assert late.poll(10_000), "no last value for a late subscriber"
    topic, kept = late.recv_multipart()
    assert (topic, json.loads(kept)["body"], len(kept) < 200) == (b"toast", {"status": True}, True)
    assert not late.poll(200)  # ok to wait briefly here: asserting that nothing more arrives (no coffee kept)


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

    page = as_page(url.removesuffix("/ws"), config)
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=page) as ws:
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


def test_the_broker_keeps_no_command_no_replaced_life_and_nothing_of_a_sender_it_forgot(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    config = loopback_config(tmp_path, BROKER_CONFIG, heartbeat_interval=0.2, offline_after=3)
    broker = run_service("broker", config)
    probe = with_key(context.socket(zmq.SUB), config, server="broker")  # a subscriber: the broker passes it on
    probe.subscribe(b"")
    probe.connect(endpoint(config, "broker", "subscribers"))
    broker.wait_for("subscribe all topics")
    publisher = with_key(context.socket(zmq.PUB), config, server="broker")  # the host tools' key: any topic
    publisher.connect(endpoint(config, "broker", "publishers"))
    command = encode(Message("light-set", "web@test", 1, 1, time.time(), {"state": "OFF"}))
    replaced = encode(Message("toast", "toaster@test", 1, 1, time.time(), {"status": True}))
    gone = encode(Message("coffee", "coffee-maker@test", 1, 1, time.time(), {"status": True}))

    def sent(frames: list[bytes]) -> bool:  # PUB drops until connected: send until the probe has it
        publisher.send_multipart(frames)
        return probe.poll(100) and probe.recv_multipart() == frames

    for frames in (command, replaced, gone):
        wait_until(lambda f=frames: sent(f), "the broker to forward it")
    new_life = encode(Message("heartbeat", "toaster@test", 2, 0, time.time(), {"for": "toast"}))
    wait_until(lambda: sent(new_life), "the new life's heartbeat")

    def handed_out() -> list[list[bytes]]:
        late = with_key(context.socket(zmq.SUB), config, server="broker")
        late.subscribe(b"")
        late.connect(endpoint(config, "broker", "subscribers"))
        got = [late.recv_multipart() for _ in range(3) if late.poll(1000)]  # ok: how long the broker may take
        late.close()
        return got

    assert handed_out() == [gone]  # no command [C1], nothing of the life a heartbeat replaced [C3]
    broker.says("BROKER forgot coffee-maker@test: not heard for 0.6s")
    assert handed_out() == []  # nothing of a sender it forgot [F1]


def test_the_broker_asks_its_publishers_again_when_it_keeps_less_than_a_heartbeat_says(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    config = loopback_config(tmp_path, BROKER_CONFIG, heartbeat_interval=0.2, offline_after=3)
    broker = run_service("broker", config)
    toaster = with_key(context.socket(zmq.XPUB), config, "toaster", server="broker")
    toaster.xpub_verbose = True  # repeats too: an ask is a subscription the toaster already has
    toaster.connect(endpoint(config, "broker", "publishers"))
    mirror = with_key(context.socket(zmq.SUB), config, server="broker")
    mirror.subscribe(b"toast")
    mirror.subscribe(b"heartbeat")
    mirror.connect(endpoint(config, "broker", "subscribers"))
    said: list[bytes] = []

    def listen(seconds: float) -> bool:
        while toaster.poll(int(seconds * 1000)):
            said.append(toaster.recv())
        return b"\x01toast" in said

    coffee = with_key(context.socket(zmq.PUB), config, "coffee-maker", server="broker")
    coffee.connect(endpoint(config, "broker", "publishers"))
    wait_until(lambda: listen(0.1), "the mirror's subscription through the broker", describe=broker.output)
    for _ in range(10):  # ten heartbeat intervals: 'my newest toast is seq 3', which never comes
        toaster.send_multipart(encode(Message("heartbeat", "toaster@x", 7, 3, time.time(), {"for": "toast"})))
        # [K5] The same of coffee, which nobody has from the broker: nothing to ask for.
        coffee.send_multipart(encode(Message("heartbeat", "coffee-maker@x", 7, 3, time.time(), {"for": "coffee"})))
        listen(0.2)
    asks = said.count(b"\x01toast") - 1
    assert 1 <= asks <= RESYNC_MAX, broker.output()  # [C4, R3]
    assert broker.messages().count("BROKER asks again for 'toast': toaster@x has a newer state than we keep") == asks
    assert not broker.count("asks again for 'coffee'"), broker.output()
    # [G4, G5] Seq 4 never came either: when 5 does, the broker counts that one message missed, and says so.
    toaster.send_multipart(encode(Message("toast", "toaster@x", 7, 5, time.time(), {"status": True})))
    broker.says("BROKER missed 1 messages from toaster@x")
    # [R4] Each ask was taken back: once the mirror goes, the toaster is told nobody wants its toast any more.
    mirror.close(linger=0)
    wait_until(lambda: listen(0.1) and b"\x00toast" in said, "the toaster told of the last unsubscribe")


def test_the_broker_passes_on_one_subscription_and_answers_every_subscriber_paced_per_topic(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    config = loopback_config(tmp_path, BROKER_CONFIG, heartbeat_interval=1, offline_after=60)
    broker = run_service("broker", config)
    now = time.time()
    upstream: dict[str, list[bytes]] = {"toast": [], "coffee": []}  # what the broker sends each publisher

    def publisher(service: str) -> zmq.Socket:
        xpub = with_key(context.socket(zmq.XPUB), config, service, server="broker")
        xpub.xpub_verbose = True  # every subscribe the broker sends up, repeats included
        xpub.connect(endpoint(config, "broker", "publishers"))
        return xpub

    services = {"toast": "toaster", "coffee": "coffee-maker"}
    publishers = {topic: publisher(service) for topic, service in services.items()}

    def told(topic: str) -> list[bytes]:  # the broker's subscriptions to the topic's publisher, so far
        while publishers[topic].poll(50):
            upstream[topic].append(publishers[topic].recv())
        return [frame for frame in upstream[topic] if frame[1:] == topic.encode()]

    def subscriber(prefix: bytes) -> zmq.Socket:
        sub = with_key(context.socket(zmq.SUB), config, server="broker")
        sub.subscribe(prefix)
        sub.connect(endpoint(config, "broker", "subscribers"))
        return sub

    def state(topic: str, seq: int) -> list[bytes]:
        return encode(Message(topic, f"{services[topic]}@x", 7, seq, now, {"status": seq == 1}))

    everything = subscriber(b"")  # hears every answer the broker sends
    firsts: dict[str, zmq.Socket] = {}
    flood: dict[str, list[zmq.Socket]] = {}
    for topic in publishers:  # coffee's window opens once toast's flood is on its way: each paced apart [P5]
        firsts[topic] = subscriber(topic.encode())
        wait_until(lambda t=topic: told(t), "a subscription passed on", describe=broker.output)
        publishers[topic].send_multipart(state(topic, 1))
        assert firsts[topic].poll(DEADLINE * 1000) and firsts[topic].recv_multipart() == state(topic, 1)
        # ANSWER_BURST answered at once, the rest together when the window closes (each answer goes to all)
        flood[topic] = [subscriber(topic.encode()) for _ in range(ANSWER_BURST + 1)]
    for topic, subs in flood.items():
        for sub in subs:
            assert sub.poll(DEADLINE * 1000), broker.output()
            assert sub.recv_multipart() == state(topic, 1)  # [C2] the last value, to each new subscriber
        assert told(topic) == [b"\x01" + topic.encode()]  # [C5] only the first subscribe goes on

    publishers["toast"].send_multipart(encode(Message("heartbeat", "toaster@x", 7, 1, now, {"for": "toast"})))
    wait_until(lambda: everything.poll(100) and everything.recv_multipart()[0] == b"heartbeat", "all answers given")
    for sub in [firsts["toast"], *flood["toast"]]:
        sub.close(linger=0)  # gone: libzmq takes their subscriptions back
    for sub in [firsts["coffee"], *flood["coffee"]]:
        sub.unsubscribe(b"coffee")  # taken back by the subscribers themselves
    for topic in publishers:  # [C5] and the last unsubscribe
        wait_until(lambda t=topic: len(told(t)) > 1, "the last unsubscribe passed on", describe=broker.output)
        assert told(topic) == [b"\x01" + topic.encode(), b"\x00" + topic.encode()]
    publishers["toast"].send_multipart(state("toast", 2))
    assert everything.poll(DEADLINE * 1000) and everything.recv_multipart() == state("toast", 2)  # none answered


def test_the_broker_refuses_an_instance_past_max_instances_and_says_so(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:  # [A2]
    config = loopback_config(tmp_path, BROKER_CONFIG, max_instances=1)
    broker = run_service("broker", config)
    toaster = with_key(context.socket(zmq.PUB), config, "toaster", server="broker")
    toaster.connect(endpoint(config, "broker", "publishers"))
    probe = with_key(context.socket(zmq.SUB), config, server="broker")
    probe.subscribe(b"toast")
    probe.connect(endpoint(config, "broker", "subscribers"))
    broker.wait_for("BROKER subscribe 'toast'")
    seqs = iter(range(1, 10_000))

    def both_sent() -> bool:  # a PUB drops until it has the broker's subscription: send until one is refused
        seq = next(seqs)
        for instance in ("toaster@a", "toaster@b"):
            toaster.send_multipart(encode(Message("toast", instance, 1, seq, time.time(), {"status": True})))
        return broker.count("refused") > 0

    wait_until(both_sent, "a second toaster refused", describe=broker.output)
    broker.says("BROKER refused toaster@b: 1 instances of toaster are alive (max_instances)")


def test_the_radio_plays_while_a_light_is_on_and_falls_silent_when_its_switch_is_gone(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    config = loopback_config(tmp_path, BROKER_CONFIG, heartbeat_interval=0.2, offline_after=3)
    broker = run_service("broker", config)
    radio = run_service("radio", config)
    broker.says("BROKER subscribe 'heartbeat' from 127.0.0.1")  # the radio's, with 'light'
    mute = with_key(context.socket(zmq.PUB), config, server="broker")  # a switch alive, whose light never came
    mute.connect(endpoint(config, "broker", "publishers"))
    probe = with_key(context.socket(zmq.SUB), config, server="broker")
    probe.subscribe(b"heartbeat")
    probe.connect(endpoint(config, "broker", "subscribers"))
    beat = encode(Message("heartbeat", "light-switch@mute", 1, 1, time.time(), {"for": "light"}))
    wait_until(lambda: mute.send_multipart(beat) or probe.poll(50), "the broker to pass a heartbeat")
    radio.says("RADIO forgot light-switch@mute: not heard for 0.6s")  # and it goes on
    switch = run_service("light-switch", config, env={"SMARTHOME_INSTANCE": "bath"})
    radio.says("RADIO heard 'light is ON' from light-switch@bath")
    radio.says("RADIO playing")
    switch.proc.send_signal(signal.SIGKILL)  # no goodbye: a switch that is gone keeps no light on
    radio.says("RADIO forgot light-switch@bath: not heard for 0.6s")
    radio.says("RADIO silent")
    assert radio.messages().count("RADIO playing") == 1
