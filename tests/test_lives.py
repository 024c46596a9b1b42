"""docs/protocol.md end to end, on real processes over real sockets (fast tier, no Docker): the stories that
broke the home while it ordered lives by their clocks, replayed commands as state and asked again forever.

Clocks are moved per process with libfaketime (the wheel ships the library): only the wall clock moves, the
monotonic clock every timeout runs on does not.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import libfaketime
import pytest
import yaml
import zmq
from smarthome.core.envelope import Message, encode
from smarthome.core.protocol import RESYNC_MAX
from smarthome.web.forwarder import GONE_SHOWN

from tests.support.base import (
    ALL_IDLE,
    ALL_READY,
    BROKER_CONFIG,
    DEADLINE,
    HOST,
    SHIPPED_CONFIG,
    wait_until,
    wait_until_async,
)
from tests.support.peers import as_page, with_key
from tests.support.processes import ServiceProcess, endpoint, loopback_config, smarthome

Start = Callable[..., ServiceProcess]
FAST = {"heartbeat_interval": 0.2, "offline_after": 3, "zmtp.heartbeat_ivl": 0.2, "zmtp.heartbeat_timeout": 0.6}
PREP = {"services.coffee-maker.prep_time": 0, "services.toaster.prep_time": 0}


def clock(offset: str, instance: str | None = None) -> dict[str, str]:
    """The environment of a process whose wall clock is `offset` ('+600s', '-600s') from everyone else's."""
    env = {**libfaketime.get_reload_information()[1], "FAKETIME": offset}
    return env | ({"SMARTHOME_INSTANCE": instance} if instance else {})


def newest(config: Path, topic: str) -> dict:
    """The current message on `topic`, as `smarthome sub TOPIC --json --count 1` prints it."""
    return json.loads(smarthome(config, "sub", topic, "--json", "--count", "1").stdout)


@pytest.mark.parametrize("source", [SHIPPED_CONFIG, BROKER_CONFIG], ids=["direct", "broker"])
def test_services_whose_clocks_are_ten_minutes_apart_work_fully_both_ways(
    tmp_path: Path, run_service: Start, source: Path
) -> None:
    config = loopback_config(tmp_path, source, **PREP)
    names = yaml.safe_load(config.read_text())["services"]
    skewed = {"light-switch": "+600s", "toaster": "-600s", "broker": "+600s"}  # ahead of, behind, the others
    services = {
        name: run_service(name, config, env=clock(skewed[name]) if name in skewed else None)
        for name in ("broker", "light-switch", "coffee-maker", "toaster", "smart-mirror")
        if name in names
    }
    assert newest(config, "light")["ts"] > time.time() + 500  # the clocks really are moved
    assert newest(config, "toast")["ts"] < time.time() - 500
    mirror = services["smart-mirror"]
    mirror.wait_for(ALL_READY)  # the switch (+10 min) reached the toaster (-10 min), the toaster the mirror
    assert smarthome(config, "light", "off").returncode == 0  # the tools' clock is the host's
    wait_until(lambda: mirror.last("MIRROR coffee=") == ALL_IDLE, "everything idle", describe=mirror.output)
    assert not [line for line in mirror.lines + services["toaster"].lines if "WARNING" in line]


def test_a_sender_back_under_its_old_name_with_an_earlier_clock_is_taken_at_its_first_heartbeat(
    tmp_path: Path, run_service: Start
) -> None:
    # Forgetting would take 30 s: what the mirror shows of the new life within DEADLINE it took from its life.
    config = loopback_config(tmp_path, heartbeat_interval=1, offline_after=30, **PREP)
    for name in ("light-switch", "coffee-maker"):
        run_service(name, config)
    toaster = run_service("toaster", config, env={"SMARTHOME_INSTANCE": "kitchen"})
    mirror = run_service("smart-mirror", config)
    mirror.wait_for(ALL_READY)
    toaster.proc.send_signal(signal.SIGKILL)  # a crash; Docker's restart keeps the hostname
    toaster.proc.wait()
    shown = mirror.count("Topic: TOASTER")
    run_service("toaster", config, env=clock("-3600s", instance="kitchen"))  # an hour behind its last life
    mirror.wait_for("Topic: TOASTER", times=shown + 1)  # the new life's state: its seq 1 or 2 follows our 2
    assert "forgot" not in mirror.output()


async def test_a_restarted_light_switch_starts_from_its_own_last_state_never_from_an_older_command(
    tmp_path: Path, run_service: Start
) -> None:
    # A restarted switch waits one heartbeat interval for its kept state [P4]: 0.5 s, enough on a busy machine.
    # The kitchen light takes no commands here: its kept state stays ON whatever the bathroom's, and is not its.
    changes = {"services.kitchen-light.commands": None}
    config = loopback_config(tmp_path, BROKER_CONFIG, heartbeat_interval=0.5, offline_after=3, **changes)
    broker, web = run_service("broker", config), run_service("web", config)
    kitchen = run_service("kitchen-light", config)
    kitchen.says("KITCHEN LIGHT published 'light is ON' (seq 1)")
    switch = run_service("light-switch", config, env={"SMARTHOME_INSTANCE": "bath"})
    port = yaml.safe_load(config.read_text())["services"]["web"]["port"]

    def crash_and_restart(switch: ServiceProcess) -> ServiceProcess:
        switch.proc.send_signal(signal.SIGKILL)  # Docker's restart keeps the hostname, so the sender's name
        switch.proc.wait()
        return run_service("light-switch", config, env={"SMARTHOME_INSTANCE": "bath"})

    listening: list[str] = []  # switches subscribed to commands at the broker, each once it has its state

    async def command(ws: aiohttp.ClientWebSocketResponse, switch: ServiceProcess, state: str) -> None:
        """From the dashboard, once `switch` (a new one each time) listens too."""
        listening.append("bath")
        subscribed = "BROKER subscribe 'light-set' from 127.0.0.1"
        await wait_until_async(
            lambda: broker.messages().count(subscribed) >= len(listening), "it", describe=broker.output
        )
        await ws.send_str(json.dumps({"command": "light", "state": state}))
        took = f"BATHROOM LIGHT switched {state} by web@{HOST}"
        await wait_until_async(lambda: took in switch.messages(), "the switch", describe=switch.output)

    async with aiohttp.ClientSession() as session:
        await wait_until_async(lambda: web.count("WEB started"), "the web", describe=web.output)
        page = as_page(f"http://127.0.0.1:{port}", config)
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws", headers=page) as ws:
            await command(ws, switch, "OFF")  # the dashboard first
            assert (await asyncio.to_thread(smarthome, config, "light", "on")).returncode == 0  # then the user
            switch.says(f"BATHROOM LIGHT switched ON by smarthome-cli@{HOST}")
            broker.wait_for("BROKER forgot smarthome-cli@")  # the tool has gone; the web heartbeats on
            again = crash_and_restart(switch)
            again.says("BATHROOM LIGHT restored 'light is ON' from its life before")  # the newest [P4]
            again.says("BATHROOM LIGHT published 'light is ON' (seq 1)")
            await command(ws, again, "OFF")  # it listens, after anything the broker had for it
            thrice = crash_and_restart(again)
            thrice.says("BATHROOM LIGHT restored 'light is OFF' from its life before")  # what the user chose
            await command(ws, thrice, "ON")
    assert again.count("switched") == 1, again.output()  # ours: no command was replayed [K3, C1]
    assert thrice.count("switched") == 1, thrice.output()


async def test_after_300_instances_come_and_go_a_new_browser_gets_the_current_view_and_stays(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    changes = {"services.web.client_queue": 64, "max_instances": 100, **FAST}
    config = loopback_config(tmp_path, **changes)
    web, switch = run_service("web", config), run_service("light-switch", config)
    fleet = with_key(context.socket(zmq.XPUB), config, "toaster")  # the web pins the toaster's key here
    fleet.bind(endpoint(config, "toaster"))
    wait_until(lambda: fleet.poll(100) and fleet.recv(), "the web's subscription", describe=web.output)
    for wave in range(3):  # 100 at a time (within max_instances [A2]): each alive and ready once, never again
        for i in range(100 * wave, 100 * (wave + 1)):
            sender = f"toaster@{i}"
            fleet.send_multipart(encode(Message("heartbeat", sender, 1, 1, time.time(), {"for": "toast"})))
            fleet.send_multipart(encode(Message("toast", sender, 1, 1, time.time(), {"status": True})))
        web.wait_for("WEB forgot toaster@", times=100 * (wave + 1))
    port = yaml.safe_load(config.read_text())["services"]["web"]["port"]
    page = as_page(f"http://127.0.0.1:{port}", config)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/ws", headers=page) as ws,
    ):
        opening: list[dict] = []
        while not any(e["topic"] == "light" for e in opening):  # the switch's state is in the view [V1]
            opening.append(json.loads((await asyncio.wait_for(ws.receive(), DEADLINE)).data))
        await ws.send_str('{"command": "light", "state": "OFF"}')
        while (event := json.loads((await asyncio.wait_for(ws.receive(), DEADLINE)).data))["topic"] != "light":
            opening.append(event)
        assert event["body"] == {"state": "OFF"}  # live, after the opening view: still connected [V2]
    assert len([e for e in opening if e["topic"] == "toast"]) <= GONE_SHOWN  # the gone leave the view [V3]
    assert len([e for e in opening if e["topic"] == "presence"]) <= GONE_SHOWN + 1  # and the switch
    assert not web.count("dropped browser"), web.output()
    switch.wait_for("switched OFF by web@")


class FakeCoffeeMaker:
    """A test-owned publisher on the coffee maker's endpoint that sees every subscription, repeats included."""

    def __init__(self, context: zmq.Context, config: Path) -> None:
        self.sock = with_key(context.socket(zmq.XPUB), config, "coffee-maker")
        self.sock.xpub_verbose = True
        self.sock.bind(endpoint(config, "coffee-maker"))

    def subscribed(self) -> None:
        wait_until(lambda: self.sock.poll(100) and self.sock.recv() == b"\x01coffee", "the mirror's subscription")

    def subscriptions(self, timeout: float) -> list[bytes]:
        """What subscribers said within `timeout` seconds."""
        said, deadline = [], time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                said.append(self.sock.recv())
        return said

    def heartbeat(self, seq: int) -> None:
        self.sock.send_multipart(encode(Message("heartbeat", "coffee-maker@t", 1, seq, time.time(), {"for": "coffee"})))

    def state(self, seq: int, ready: bool) -> None:
        self.sock.send_multipart(encode(Message("coffee", "coffee-maker@t", 1, seq, time.time(), {"status": ready})))


@pytest.fixture
def watched(tmp_path: Path, run_service: Start, context: zmq.Context) -> tuple[FakeCoffeeMaker, ServiceProcess]:
    """A fake coffee maker, and the real mirror subscribed to it."""
    config = loopback_config(tmp_path, **FAST)
    fake = FakeCoffeeMaker(context, config)
    mirror = run_service("smart-mirror", config)
    fake.subscribed()
    return fake, mirror


def test_a_subscriber_that_hears_of_a_state_it_does_not_hold_asks_a_bounded_number_of_times(
    watched: tuple[FakeCoffeeMaker, ServiceProcess],
) -> None:
    fake, mirror = watched
    said = []
    for _ in range(30):  # 6 s of heartbeats, 10 times the time after which a sender is forgotten
        fake.heartbeat(5)  # "my newest coffee is seq 5", which it never sends
        said += fake.subscriptions(0.2)
    asked = said.count(b"\x01coffee")
    assert 1 <= asked <= RESYNC_MAX, mirror.output()  # it asked, then stopped [R3]
    assert (
        mirror.messages().count("MIRROR asks again for 'coffee': coffee-maker@t has a newer state than we hold")
        == asked
    )
    assert b"\x00coffee" not in said  # an ask never unsubscribes [R4]


def test_a_state_lost_on_the_way_is_asked_for_and_taken(watched: tuple[FakeCoffeeMaker, ServiceProcess]) -> None:
    fake, mirror = watched
    fake.heartbeat(1)  # seq 1 was sent while the mirror could not get it
    deadline = time.monotonic() + DEADLINE
    while not mirror.count('Topic: COFFEE MAKER => {"status": true}'):  # bounded by the deadline
        assert time.monotonic() < deadline, mirror.output()
        fake.heartbeat(1)
        if b"\x01coffee" in fake.subscriptions(0.2):  # asked: answer as a publisher does [P2]
            fake.heartbeat(1)
            fake.state(1, ready=True)
    mirror.wait_for("MIRROR coffee=ready")
