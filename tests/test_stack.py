"""The Docker tier: the real compose stacks on a real engine, checked through their logs and exit codes.

The stacks publish their fixed ports on 127.0.0.1 for the host tools, so stop your own stack first.

Needs a Docker engine with Compose v2 (`bash .ci/provision-docker` sets one up). Outside CI a missing
engine skips this module; with CI=true it fails, so CI can never pass without running it.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.support.base import ALL_READY, BROKER_CONFIG, ROOT, wait_until
from tests.support.peers import as_page
from tests.support.processes import smarthome
from tests.support.stack import BROKER_FILES, Stack, mirror_shows

pytestmark = pytest.mark.docker

SERVICES = ["light-switch", "coffee-maker", "toaster", "smart-mirror", "web"]


def wait_for_the_morning_routine(stack: Stack) -> None:
    stack.logs("light-switch").wait_for("LIGHT SWITCH published 'light is ON' (seq 1)")
    stack.logs("coffee-maker").wait_for("COFFEE MAKER received 'light is ON' from light.")
    stack.logs("toaster").wait_for("TOASTER received 'light is ON' from light.")
    stack.logs("smart-mirror").wait_for('Topic: COFFEE MAKER => {"status": true}')
    stack.logs("smart-mirror").wait_for('Topic: TOASTER => {"status": true}')
    stack.logs("smart-mirror").wait_for(ALL_READY)


def test_the_stack_runs_the_routine_survives_restarts_and_stops_cleanly(stack: Stack) -> None:
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60")
    for service in SERVICES:
        [container] = stack.containers(service)
        assert container.attrs["State"]["Health"]["Status"] == "healthy"
    wait_for_the_morning_routine(stack)

    received = stack.logs("coffee-maker").count("received 'light is ON'")
    stack.compose("restart", "light-switch")
    stack.logs("coffee-maker").wait_for("received 'light is ON' from light.", times=received + 1)

    toast_ready = 'Topic: TOASTER => {"status": true}'
    ready_before = stack.logs("smart-mirror").count(toast_ready)
    stack.compose("restart", "toaster")
    stack.logs("smart-mirror").wait_for(toast_ready, times=ready_before + 1)
    wait_until(lambda: stack.logs("smart-mirror").last("MIRROR coffee=") == ALL_READY, "all ready", 60, stack.all_logs)

    stack.stop_and_check_exit_codes()


# Run on the compose network by a container of the test's own, with a keypair of its own: it knows the light
# switch's public key (public keys are no secret) and tries to listen and to command. It prints what happened.
INTRUDER = """
import struct, time, zmq
context = zmq.Context()
refused = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
outcome = {}
for kind, port in ((zmq.SUB, 5556), (zmq.PUB, 5555)):
    sock = context.socket(kind)
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.curve_serverkey = open("/switch.key").read().split('public-key = "')[1].split('"')[0].encode()
    if kind == zmq.SUB:
        sock.subscribe(b"")
    monitor = sock.get_monitor_socket(refused)
    sock.connect(f"tcp://light-switch:{port}")
    outcome[port] = "refused" if monitor.poll(20_000) else "let in"
    if kind == zmq.PUB:
        for seq in range(1, 11):
            body = b'{"sender":"web@x","life":1,"seq":%d,"ts":0,"body":{"state":"OFF"}}' % seq
            sock.send_multipart([b"light-set", body])
    else:
        outcome["got"] = sock.poll(1000)
print(outcome[5556], outcome[5555], "got" if outcome["got"] else "nothing", flush=True)
context.destroy(linger=1000)
"""


def test_a_container_without_a_known_key_gets_nothing_and_cannot_switch_the_light(stack: Stack) -> None:
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60")
    wait_for_the_morning_routine(stack)
    [switch] = stack.containers("light-switch")
    output = stack.engine.containers.run(
        switch.image.id,
        entrypoint=["python", "-c", INTRUDER],
        network=stack.network("home").name,
        volumes={str(ROOT / "keys" / "light-switch.key"): {"bind": "/switch.key", "mode": "ro"}},
        remove=True,
    )
    assert output.decode().split() == ["refused", "refused", "nothing"]
    assert stack.logs("light-switch").count("switched") == 0
    stack.stop_and_check_exit_codes()


@pytest.mark.parametrize(
    "order",
    [
        ["smart-mirror", "toaster", "coffee-maker", "light-switch"],
        ["coffee-maker", "light-switch", "smart-mirror", "toaster"],
    ],
    ids=["subscribers first", "mixed"],
)
def test_any_start_order_converges(stack: Stack, order: list[str]) -> None:
    for service in order:
        stack.compose("up", "--detach", "--wait", "--wait-timeout", "60", "--no-deps", service)
    wait_for_the_morning_routine(stack)
    stack.stop_and_check_exit_codes()


DASHBOARD = "http://127.0.0.1:8080"


async def dashboard_senders(topic: str, count: int) -> set[str]:
    """The senders of `topic` a browser hears from the forwarder on 127.0.0.1:8080, once there are `count`."""
    senders: set[str] = set()
    page = as_page(DASHBOARD, BROKER_CONFIG)  # its token: made beside the keys, the same for either wiring
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{DASHBOARD}/ws?topics={topic}", headers=page) as ws,
    ):
        while len(senders) < count:
            event = json.loads((await asyncio.wait_for(ws.receive(), 60)).data)
            if event["topic"] == topic:
                senders.add(event["sender"])
    return senders


@pytest.mark.parametrize("stack", [BROKER_FILES], indirect=True)
def test_broker_wiring_is_n_to_n_scales_serves_late_joiners_and_survives_a_broker_restart(stack: Stack) -> None:
    early = ["broker", "light-switch", "kitchen-light", "coffee-maker", "toaster", "smart-mirror", "web"]
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60", "--scale", "toaster=3", *early)
    toasters = stack.containers("toaster")
    assert len(toasters) == 3
    for appliance in [*toasters, *stack.containers("coffee-maker")]:  # every subscriber hears both switches
        wait_until(
            lambda c=appliance: c.logs().decode().count("received 'light is ON' from light.") >= 2,
            f"{appliance.name} to hear both light switches",
            60,
            stack.all_logs,
        )
    wait_until(
        lambda: mirror_shows(stack, "ready", toasters=3), "the mirror to show 3 toasters ready", 60, stack.all_logs
    )

    senders = asyncio.run(dashboard_senders("toast", count=3))  # the forwarder, through the broker
    assert len(senders) == 3

    stack.compose("up", "--detach", "--wait", "--no-deps", "radio")  # a late joiner
    stack.logs("radio").wait_for("RADIO heard 'light is ON' from light-switch@")
    stack.logs("radio").wait_for("RADIO heard 'light is ON' from kitchen-light@")
    stack.logs("radio").wait_for("RADIO playing")

    # The host tools, through the broker's ports on 127.0.0.1.
    seen = smarthome(BROKER_CONFIG, "sub", "toast", "--count", "3", "--timeout", "30")
    assert seen.returncode == 0, seen.stderr
    assert len({line.split()[1] for line in seen.stdout.splitlines()}) == 3  # three toaster senders
    assert smarthome(BROKER_CONFIG, "light", "off").returncode == 0
    wait_until(lambda: mirror_shows(stack, "idle", toasters=3), "the mirror to show all idle", 60, stack.all_logs)
    stack.logs("radio").wait_for("RADIO silent")

    stack.compose("restart", "broker")
    stack.logs("broker").wait_for("BROKER started", times=2)
    switched = smarthome(BROKER_CONFIG, "light", "on", "--timeout", "30")  # waits for the switches to reconnect
    assert switched.returncode == 0, switched.stderr
    wait_until(lambda: mirror_shows(stack, "ready", toasters=3), "the mirror to converge again", 60, stack.all_logs)

    stack.stop_and_check_exit_codes()
