"""Faults on real local processes: crashes, frozen peers, lost messages (fast tier, no Docker).

Heartbeats carry the sender's seq without consuming one, so gaps are exact; a sender that stops
heartbeating is forgotten (no ghosts); ZMTP heartbeats drop a connection to a frozen peer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from smarthome.core.envelope import Message, encode

from tests.support.base import ALL_READY, BROKER_CONFIG, HOST, wait_until
from tests.support.peers import listener, with_key
from tests.support.processes import ServiceProcess, endpoint, loopback_config

Start = Callable[..., ServiceProcess]
FAST = {"heartbeat_interval": 0.2, "offline_after": 3, "zmtp.heartbeat_ivl": 0.2, "zmtp.heartbeat_timeout": 0.6}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return loopback_config(tmp_path, **FAST, **{"services.coffee-maker.prep_time": 0, "services.toaster.prep_time": 0})


def instance(name: str) -> dict[str, str]:
    """Two instances of one service on one host differ only by this (in containers: the hostname)."""
    return {"SMARTHOME_INSTANCE": name}


def test_heartbeats_carry_the_seq_without_consuming_one(config: Path, run_service: Start, context: zmq.Context) -> None:
    switch = run_service("light-switch", config)
    switch.wait_for("started")
    sub = listener(context, config, "light-switch", b"light", b"heartbeat")
    seen: list[tuple[str, int]] = []
    while len([t for t, _ in seen if t == "heartbeat"]) < 3:  # bounded: each wait has a deadline
        wait_until(lambda: sub.poll(100), "a message from the switch", describe=switch.output)
        topic, body = sub.recv_multipart()
        seen.append((topic.decode(), json.loads(body)["seq"]))
    assert ("light", 1) in seen
    assert {seq for topic, seq in seen if topic == "heartbeat"} == {1}  # 'newest is 1', again and again


def test_a_killed_instance_is_forgotten_and_the_mirror_shows_only_the_live_ones(
    tmp_path: Path, run_service: Start
) -> None:
    config = loopback_config(
        tmp_path, BROKER_CONFIG, **FAST, **{"services.coffee-maker.prep_time": 0, "services.toaster.prep_time": 0}
    )
    for name in ("broker", "light-switch", "coffee-maker"):
        run_service(name, config)
    run_service("toaster", config, env=instance("a"))
    doomed = run_service("toaster", config, env=instance("b"))
    mirror = run_service("smart-mirror", config)
    wait_until(
        lambda: mirror.last("MIRROR coffee=") == "MIRROR coffee=ready toast@a=ready toast@b=ready",
        "the mirror to show both toasters",
        describe=mirror.output,
    )
    doomed.proc.send_signal(signal.SIGKILL)  # no goodbye: only its silence tells
    mirror.says("MIRROR forgot toaster@b: not heard for 0.6s")
    wait_until(lambda: mirror.last("MIRROR coffee=") == ALL_READY, "the ghost to go", describe=mirror.output)

    run_service("toaster", config, env=instance("c"))  # a recreated instance comes back under a new name
    wait_until(
        lambda: mirror.last("MIRROR coffee=") == "MIRROR coffee=ready toast@a=ready toast@c=ready",
        "the mirror to show the new toaster",
        describe=mirror.output,
    )


def test_a_switch_heard_only_by_its_heartbeats_is_forgotten_and_the_appliance_goes_on(
    config: Path, run_service: Start, context: zmq.Context
) -> None:
    switch = with_key(context.socket(zmq.XPUB), config, "light-switch")  # the coffee maker pins its key
    switch.linger = 0
    switch.bind(endpoint(config, "light-switch"))
    coffee = run_service("coffee-maker", config)
    subscribed: list[bytes] = []

    def heartbeats_wanted() -> bool:  # an XPUB sends nothing to a subscriber before its subscription
        while switch.poll(100):
            subscribed.append(switch.recv())
        return b"\x01heartbeat" in subscribed

    wait_until(heartbeats_wanted, "the coffee maker's subscription", describe=coffee.output)
    switch.send_multipart(encode(Message("heartbeat", "light-switch@fake", 1, 0, time.time(), {"for": "light"})))
    coffee.says("COFFEE MAKER forgot light-switch@fake: not heard for 0.6s")  # no light of it was ever on
    switch.send_multipart(encode(Message("light", "light-switch@fake", 2, 1, time.time(), {"state": "ON"})))
    coffee.says("COFFEE MAKER received 'light is ON' from light.")
    assert coffee.proc.poll() is None


def test_a_frozen_publisher_is_detected_by_zmtp_heartbeats_and_found_again(config: Path, run_service: Start) -> None:
    switch = run_service("light-switch", config)
    coffee = run_service("coffee-maker", config)
    coffee.wait_for("COFFEE MAKER received 'light is ON' from light.")
    os.kill(switch.proc.pid, signal.SIGSTOP)  # its TCP connections stay open: no FIN, no RST
    try:
        coffee.says(f"COFFEE MAKER lost {endpoint(config, 'light-switch')}, reconnecting")  # only ZMTP could tell
        coffee.says(f"COFFEE MAKER forgot light-switch@{HOST}: not heard for 0.6s")  # no light is on any more
        coffee.wait_for("COFFEE MAKER idle", times=2)
    finally:
        os.kill(switch.proc.pid, signal.SIGCONT)
    coffee.wait_for("COFFEE MAKER received 'light is ON' from light.", times=2)  # reconnected, state re-sent
    coffee.wait_for("COFFEE MAKER ready", times=2)


def test_a_frozen_subscriber_counts_what_it_missed_and_catches_up(tmp_path: Path, run_service: Start) -> None:
    config = loopback_config(tmp_path, **FAST, **{"services.light-switch.toggle_period": 0.05})
    switch = run_service("light-switch", config)
    coffee = run_service("coffee-maker", config)
    coffee.wait_for("COFFEE MAKER received 'light is OFF'")
    published = switch.count("published")
    os.kill(coffee.proc.pid, signal.SIGSTOP)
    try:
        # Well past the ZMTP timeout the switch has dropped the frozen peer, and what it sends meanwhile is lost.
        switch.wait_for("published", times=published + 100)
    finally:
        os.kill(coffee.proc.pid, signal.SIGCONT)
    coffee.wait_for("COFFEE MAKER missed")
    line = coffee.last("COFFEE MAKER missed")
    assert line.endswith(f"messages from light-switch@{socket.gethostname()}"), line
    received = coffee.count("received 'light is")
    coffee.wait_for("received 'light is", times=received + 3)  # and it follows the switch again
