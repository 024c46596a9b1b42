"""The home on a real Mosquitto (`docker compose --profile mqtt up`), driven by clients nobody here wrote:
Mosquitto's own mosquitto_sub and mosquitto_pub, run from its image on the host's network, so they reach the
broker where a Home Assistant on this machine would, at 127.0.0.1:1883 (docs/home-assistant.md)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.support.base import ALL_READY, ROOT, stamp, wait_until
from tests.support.faults import kill_service, restarted_and_healthy
from tests.support.stack import WIRINGS, Stack

pytestmark = pytest.mark.docker

IMAGE = "smarthome-mosquitto:latest"  # the stack's Mosquitto image, which carries its clients too
CLIENT = "home-assistant"  # the MQTT user a Home Assistant signs in as
ALL_IDLE = "MIRROR coffee=idle toast=idle"
READY, IDLE = {"coffee": "ready", "toast": "ready"}, {"coffee": "idle", "toast": "idle"}  # the mirror's views
ENTITIES = {"direct": 4, "broker": 5}  # the broker wiring has a kitchen light too


def password(user: str) -> str:
    return (ROOT / "keys" / f"{user}.mqtt-password").read_text().strip()


def client(tool: str, *args: str, user: str | None = CLIENT, secret: str | None = None, lines: str | None = None):
    """Run Mosquitto's `tool` (mosquitto_sub or mosquitto_pub) as `user` against 127.0.0.1:1883."""
    command = ["docker", "run", "--rm", "-i", "--network", "host", "--entrypoint", tool, IMAGE, "-h", "127.0.0.1"]
    if user:
        command += ["-u", user, "-P", secret or password(user)]
    return subprocess.run([*command, *args], input=lines, capture_output=True, text=True, timeout=30)


def retained() -> dict[str, str]:
    """Every retained message of the home and of its discovery, {topic: payload}, as a new client finds them."""
    topics = ["-t", "smarthome/#", "-t", "homeassistant/#"]
    result = client("mosquitto_sub", *topics, "-v", "--retained-only", "-W", "1")
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def publish(topic: str, payload: str, user: str | None = CLIENT, secret: str | None = None):
    return client("mosquitto_pub", "-t", topic, "-m", payload, "-q", "1", user=user, secret=secret)


def shows(state: str, view: dict[str, str]) -> bool:
    """Whether MQTT holds the light in `state` and the mirror's `view`, retained, with everyone online."""
    held = retained()
    light = json.loads(held.get("smarthome/light-switch/light", "{}"))
    mirror = json.loads(held.get("smarthome/smart-mirror/mirror", "{}"))
    online = [payload for topic, payload in held.items() if topic.endswith("/availability")]
    return light == {"state": state} and mirror == {"view": view} and set(online) == {"online"}


@pytest.mark.parametrize("stack", list(WIRINGS.values()), ids=list(WIRINGS), indirect=True)
def test_home_assistant_finds_the_home_and_switches_the_light_over_mqtt(stack: Stack) -> None:
    wiring = "broker" if any("broker" in f for f in stack.files) else "direct"
    stack.profiles = ["mqtt"]
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60")
    stack.logs("smart-mirror").wait_for(ALL_READY)
    wait_until(lambda: shows("ON", READY), "the home on MQTT", 30, stack.all_logs)

    held = retained()
    configs = {topic: json.loads(payload) for topic, payload in held.items() if topic.endswith("/config")}
    assert len(configs) == ENTITIES[wiring]
    switch = configs["homeassistant/switch/smarthome/light-switch/config"]
    assert switch["command_topic"] == "smarthome/light-set" and switch["unique_id"] == "smarthome_light-switch_light"
    assert held["smarthome/mqtt-bridge/availability"] == "online"

    refused = [publish("smarthome/light-set", "OFF", user=None), publish("smarthome/light-set", "OFF", secret="x")]
    assert all(r.returncode != 0 and "not authorised" in r.stderr for r in refused), refused
    assert not publish("smarthome/light-switch/light", '{"state": "OFF"}').returncode  # acknowledged (QoS 1)...
    assert retained()["smarthome/light-switch/light"] == '{"state":"ON"}'  # ...but dropped: the ACL lets it not write

    assert not publish("smarthome/light-set", "OFF").returncode
    stack.logs("smart-mirror").wait_for(ALL_IDLE)
    wait_until(lambda: shows("OFF", IDLE), "OFF on MQTT", 30, stack.all_logs)
    assert stack.logs("light-switch").count("switched OFF by mqtt-bridge@") == 1

    assert not publish("smarthome/light-set", '{"state": "ON"}').returncode
    wait_until(lambda: shows("ON", READY), "ON again", 30, stack.all_logs)
    stack.stop_and_check_exit_codes()


def test_the_bridge_refuses_bad_input_and_outlives_restarts_of_either_side(stack: Stack) -> None:
    stack.profiles = ["mqtt"]
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60")
    wait_until(lambda: shows("ON", READY), "the home on MQTT", 60, stack.all_logs)
    bridge = stack.logs("mqtt-bridge")

    # Bad payloads, one line each; then a flood, cut to the rate limit (2/s after 5), all as one client.
    flood = "\n".join(["maybe", "x" * 2000, '{"state": 1}', *["OFF", "ON"] * 100]) + "\n"
    started = time.monotonic()
    assert not client("mosquitto_pub", "-t", "smarthome/light-set", "-l", lines=flood).returncode
    bridge.wait_for("dropped an MQTT command: 'maybe' is not ON, OFF or")
    bridge.wait_for("dropped an MQTT command: 2000 bytes, not ON, OFF or")
    bridge.wait_for("over the rate limit (2/s)")
    sent = bridge.count("sent light-set ")
    assert sent <= 5 + 2 * (time.monotonic() - started) + 2, sent
    [container] = stack.containers("mqtt-bridge")
    assert container.attrs["RestartCount"] == 0

    # Mosquitto restarted (it keeps nothing): the bridge reconnects and publishes everything again.
    connects = bridge.count("connected to MQTT broker")
    [mosquitto] = stack.containers("mosquitto")
    mosquitto.restart(timeout=5)
    back = time.time()
    bridge.wait_for("connected to MQTT broker", times=connects + 1)
    reconnected = stamp(
        bridge.log_lines()[[i for i, line in enumerate(bridge.log_lines()) if "connected to MQTT broker" in line][-1]]
    )
    assert reconnected is not None and reconnected - back < 3, "reconnected more than 3 s after Mosquitto was back"
    wait_until(lambda: len([t for t in retained() if t.endswith("/config")]) == 4, "discovery again", 3)

    # The bridge crashes: its last will says offline, the home's states stay; back, it says online again.
    wait_until(lambda: shows("ON", READY) or shows("OFF", IDLE), "the home steady", 30, stack.all_logs)
    states = {topic: payload for topic, payload in retained().items() if not topic.endswith("availability")}
    watch = ["-t", "smarthome/mqtt-bridge/availability", "-C", "3", "-W", "60"]  # retained online, offline, online
    with subprocess.Popen(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            "--entrypoint",
            "mosquitto_sub",
            IMAGE,
            "-h",
            "127.0.0.1",
            "-u",
            CLIENT,
            "-P",
            password(CLIENT),
            *watch,
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as watcher:
        said = [watcher.stdout.readline().strip()]  # the retained one: the watcher has subscribed
        kill_service(container)
        said += watcher.communicate(timeout=90)[0].split()
    assert said == ["online", "offline", "online"]
    assert {t: p for t, p in retained().items() if not t.endswith("availability")} == states
    wait_until(lambda: restarted_and_healthy(container, 0), "the bridge restarted", 60, stack.all_logs)
    stack.stop_and_check_exit_codes()
