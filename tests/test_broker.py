"""Broker wiring over real sockets on loopback (no Docker); the host-side tools are in test_cli.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from smarthome.core.envelope import Message, encode
from support import BROKER_CONFIG, ServiceProcess, endpoint, loopback_config, wait_until

Start = Callable[..., ServiceProcess]
ROUTINE = ["broker", "light-switch", "kitchen-light", "coffee-maker", "toaster", "smart-mirror", "radio"]
ALL_READY = "MIRROR coffee=ready toast=ready"
ALL_IDLE = "MIRROR coffee=idle toast=idle"


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
