"""The home on MQTT, without a broker: Home Assistant's discovery against its documented schema, the templates
rendered as Home Assistant renders them (Jinja2), the command an MQTT payload is, and the broker's ACL and users.
The Docker tier (tests/test_mqtt_stack.py) runs the same against a real Mosquitto and its own clients."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import msgspec
import paho.mqtt.client as paho
import pytest
from smarthome.core.config import load_config
from smarthome.core.envelope import ApplianceStatus, LightState, MirrorView
from smarthome.core.identity import Identity
from smarthome.core.keys import KeysError, Policy
from smarthome.mqtt.bridge import password
from smarthome.mqtt.client import Mqtt
from smarthome.mqtt.home import ACL_FILE, OFFLINE, ONLINE, PASSWORD_SUFFIX, MqttHome, Shown

from .support.base import BROKER_CONFIG, ROOT, SHIPPED_CONFIG

# Home Assistant's MQTT discovery, as documented (home-assistant.io/integrations/mqtt, and each component's page:
# switch.mqtt, binary_sensor.mqtt, sensor.mqtt): the topic, and the options each component takes, with their types.
DISCOVERY_TOPIC = re.compile(r"^[^/#+]+/(switch|binary_sensor|sensor)/([a-zA-Z0-9_-]+/)?[a-zA-Z0-9_-]+/config$")
COMMON: dict[str, type | tuple[type, ...]] = {
    "availability": list,
    "availability_mode": str,
    "device": dict,
    "origin": dict,
    "name": (str, type(None)),
    "unique_id": str,
    "state_topic": str,
    "value_template": str,
    "json_attributes_topic": str,
    "json_attributes_template": str,
    "icon": str,
    "qos": int,
    "enabled_by_default": bool,
    "entity_category": str,
}
OPTIONS = {
    "switch": COMMON
    | {
        "command_topic": str,
        "payload_on": str,
        "payload_off": str,
        "state_on": str,
        "state_off": str,
        "optimistic": bool,
        "retain": bool,
        "device_class": str,
    },
    "binary_sensor": COMMON
    | {
        "payload_on": str,
        "payload_off": str,
        "device_class": str,
        "expire_after": int,
        "off_delay": int,
        "force_update": bool,
    },
    "sensor": COMMON
    | {"device_class": str, "unit_of_measurement": str, "state_class": str, "expire_after": int, "force_update": bool},
}
REQUIRED = {"switch": {"command_topic"}, "binary_sensor": {"state_topic"}, "sensor": {"state_topic"}}
DEVICE = {"identifiers": list, "name": str, "manufacturer": str, "model": str, "sw_version": str}
ORIGIN = {"name": str, "sw_version": str, "support_url": str}
SENSOR_STATE_MAX = 255  # characters: Home Assistant refuses a longer sensor state


def homes() -> list[MqttHome]:
    return [MqttHome(load_config(path), "mqtt-bridge") for path in (SHIPPED_CONFIG, BROKER_CONFIG)]


def check_options(where: str, given: dict[str, Any], documented: dict[str, Any]) -> None:
    for key, value in given.items():
        assert key in documented, f"{where}: '{key}' is no documented option"
        assert isinstance(value, documented[key]), f"{where}: '{key}' is {type(value).__name__}"


@pytest.mark.parametrize("home", homes(), ids=["direct", "broker"])
def test_the_discovery_is_what_home_assistant_documents(home: MqttHome) -> None:
    entities = list(home.entities.values())
    assert {e.service for e in entities} >= {"light-switch", "coffee-maker", "toaster", "smart-mirror"}
    for entity in entities:
        config = json.loads(entity.discovery)
        match = DISCOVERY_TOPIC.match(entity.discovery_topic)
        assert match and match[1] == entity.component, entity.discovery_topic
        check_options(entity.discovery_topic, config, OPTIONS[entity.component])
        assert REQUIRED[entity.component] <= set(config)
        check_options("device", config["device"], DEVICE)
        check_options("origin", config["origin"], ORIGIN)
        assert config["availability_mode"] in ("all", "any", "latest")
        for availability in config["availability"]:
            assert set(availability) == {"topic"} and not set(availability["topic"]) & set("#+")
        for key in ("state_topic", "command_topic", "json_attributes_topic"):
            assert not set(config.get(key, "")) & set("#+"), f"{key}: a topic to publish has no wildcard"
    assert len({json.loads(e.discovery)["unique_id"] for e in entities}) == len(entities)
    assert {e.component for e in entities} == {"switch", "binary_sensor", "sensor"}


def test_unique_ids_and_topics_come_from_names_alone_so_they_survive_restarts() -> None:
    first, again = homes()[0], homes()[0]
    assert [(e.discovery_topic, e.discovery) for e in first.entities.values()] == [
        (e.discovery_topic, e.discovery) for e in again.entities.values()
    ]


STATES = [
    (LightState("ON"), "ON"),
    (LightState("OFF"), "OFF"),
    (ApplianceStatus(True), "ON"),
    (ApplianceStatus(False), "OFF"),
    (MirrorView({"toast": "idle", "coffee": "ready"}), "coffee=ready toast=idle"),
]


@pytest.mark.parametrize(("body", "shown"), STATES, ids=[repr(b) for b, _ in STATES])
def test_each_state_renders_as_home_assistant_reads_it(body: msgspec.Struct, shown: str) -> None:
    """The bridge publishes the body's JSON; Home Assistant renders the entity's value_template on it (Jinja2,
    with `value_json`) and compares the result with payload_on / payload_off."""
    entity = next(e for e in homes()[1].entities.values() if e.body_type is type(body))
    config = json.loads(entity.discovery)
    value_json = json.loads(msgspec.json.encode(body))
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    assert environment.from_string(config["value_template"]).render(value_json=value_json) == shown
    if entity.component in ("switch", "binary_sensor"):
        assert shown in (config["payload_on"], config["payload_off"])
    if "json_attributes_template" in config:  # the mirror: each label an attribute
        attributes = environment.from_string(config["json_attributes_template"]).render(value_json=value_json)
        assert json.loads(attributes) == body.view


def test_the_largest_mirror_view_is_a_state_home_assistant_takes() -> None:
    """A sensor's state is at most 255 characters: the mirror's summary of its usual view fits (a view of many
    scaled instances is cut by Home Assistant, the attributes still hold every label)."""
    home = homes()[0]
    entity = home.entities["smart-mirror"]
    view = {"coffee": "ready", "toast": "unknown"}
    rendered = jinja2.Environment().from_string(json.loads(entity.discovery)["value_template"])
    assert len(rendered.render(value_json={"view": view})) <= SENSOR_STATE_MAX


COMMANDS = {b"ON": "ON", b"OFF": "OFF", b" OFF\n": "OFF", b'{"state": "ON"}': "ON", b'{"state":"OFF","x":1}': "OFF"}
NOT_COMMANDS = [b"", b"on", b"TOGGLE", b"{", b'{"state": "DIM"}', b'["ON"]', b"\xff\xfe", b"ON" * 40, b"\x00ON"]


@pytest.mark.parametrize("payload", COMMANDS)
def test_an_mqtt_command_is_on_or_off(payload: bytes) -> None:
    assert homes()[0].command(payload) == LightState(COMMANDS[payload])


@pytest.mark.parametrize("payload", NOT_COMMANDS)
def test_anything_else_is_refused_in_one_line(payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"is not ON, OFF or|bytes, not ON, OFF") as error:
        homes()[0].command(payload)
    assert "\n" not in str(error.value)


def test_the_acl_lets_home_assistant_read_the_home_and_write_the_command_only() -> None:
    home = homes()[0]
    rules: dict[str, list[str]] = {}
    user = None
    for line in home.acl().splitlines():
        if line.startswith("user "):
            user = line.split()[1]
        elif line.startswith("topic "):
            rules.setdefault(user or "anonymous", []).append(line.removeprefix("topic "))
    assert set(rules) == {"mqtt-bridge", "home-assistant"}  # no rule for anyone else: nobody else gets in
    assert rules["home-assistant"] == ["read smarthome/#", "read homeassistant/#", "write smarthome/light-set"]
    assert all(rule.startswith("readwrite ") for rule in rules["mqtt-bridge"])


def test_smarthome_keys_makes_each_mqtt_users_password_and_the_acl(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    env = {"SMARTHOME_KEYS": str(keys), "SMARTHOME_CONFIG": str(SHIPPED_CONFIG), "PATH": "/usr/bin:/bin"}

    def make_keys() -> str:
        command = [sys.executable, "-m", "smarthome", "keys"]
        return subprocess.run(command, env=env, cwd=ROOT, text=True, capture_output=True, check=True).stderr

    assert "mqtt-bridge.mqtt-password, home-assistant.mqtt-password" in make_keys()
    passwords = {path.read_text() for path in keys.glob(f"*{PASSWORD_SUFFIX}")}
    assert len(passwords) == 2 and all(len(p.strip()) >= 40 for p in passwords)
    assert all(path.stat().st_mode & 0o077 == 0 for path in keys.glob(f"*{PASSWORD_SUFFIX}"))
    assert (keys / ACL_FILE).read_text() == homes()[0].acl()
    assert "made none, all there" in make_keys()
    assert {path.read_text() for path in keys.glob(f"*{PASSWORD_SUFFIX}")} == passwords  # kept, not remade


def test_a_password_file_the_bridge_cannot_use_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMARTHOME_KEYS", str(tmp_path))
    me = Identity("mqtt-bridge", load_config(SHIPPED_CONFIG))
    made = password(me)  # none there: made now, as in local mode
    assert len(made) >= 40 and password(me) == made
    (tmp_path / f"mqtt-bridge{PASSWORD_SUFFIX}").write_text("pässwort", encoding="utf-8")  # edited by hand
    with pytest.raises(KeysError) as refused:
        password(me)
    assert str(refused.value).startswith(f"{tmp_path}: no MQTT password for mqtt-bridge: 'ascii' codec can't decode")
    assert "\n" not in str(refused.value)


def test_the_bridge_may_send_the_light_set_command_and_nothing_else() -> None:
    """[A1] Its own key lets it say what the dashboard may: light-set, as itself; never a state of the home."""
    policy = Policy(load_config(SHIPPED_CONFIG))
    assert policy.refuses("mqtt-bridge", "mqtt-bridge@x", "light-set") is None
    assert policy.refuses("mqtt-bridge", "mqtt-bridge@x", "light") == "mqtt-bridge may not publish 'light'"
    assert policy.refuses("mqtt-bridge", "light-switch@x", "light-set") == "mqtt-bridge sent as light-switch@x"


def test_a_service_is_online_while_one_of_its_senders_is_and_shows_its_newest_state() -> None:
    shown = Shown()
    assert shown.online("toaster") == OFFLINE and shown.state("toaster") is None
    assert shown.heard("toaster", "toaster@a") and not shown.heard("toaster", "toaster@a")  # news once
    shown.took("toaster", "toaster@a", b"A1")
    assert shown.heard("toaster", "toaster@b")
    shown.took("toaster", "toaster@b", b"B1")
    shown.took("toaster", "toaster@a", b"A2")
    assert shown.online("toaster") == ONLINE and shown.state("toaster") == b"A2"
    assert shown.forgot("toaster", "toaster@b") is None  # not the one shown: nothing to show anew
    shown.took("toaster", "toaster@b", b"B2")
    assert shown.forgot("toaster", "toaster@b") == b"A2"  # the one shown left: the other's is shown now
    assert shown.online("toaster") == ONLINE
    assert shown.forgot("toaster", "toaster@a") is None
    assert shown.online("toaster") == OFFLINE and shown.state("toaster") is None


def test_what_breaks_on_the_mqtt_thread_ends_the_service_with_code_1() -> None:
    """A callback on paho's thread that raises is handed to the loop, which exits 1: never a bridge that has
    silently stopped taking commands."""
    handed: list = []
    mqtt = Mqtt(homes()[0], "password", handed.append)
    mqtt.commands.take = lambda: 1 / 0  # what a bug would do
    message = paho.MQTTMessage(topic=b"smarthome/light-set")
    mqtt.client.on_message(mqtt.client, None, message)
    [failed] = handed
    with pytest.raises(SystemExit) as ended:
        failed()
    assert ended.value.code == 1
