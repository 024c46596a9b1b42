"""The home as it appears on an MQTT broker: its topics, Home Assistant's discovery, and who may do what there.

Everything follows from the config (docs/home-assistant.md gives the layout, with PREFIX the bridge's
`topic_prefix`): each service that publishes a state topic is one Home Assistant device with one entity, its look
given by the body its topic carries. Nothing here talks to a broker (mqtt/bridge.py does), so it is tested fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from smarthome import __version__
from smarthome.core.config import Config, LightSwitchConfig, MqttBridgeConfig
from smarthome.core.envelope import ApplianceStatus, LightState, MirrorView
from smarthome.core.protocol import Kind

ONLINE, OFFLINE = "online", "offline"  # Home Assistant's default availability payloads
ON, OFF = "ON", "OFF"  # and its default switch and binary_sensor payloads
MAX_COMMAND_BYTES = 64  # an MQTT command is ON, OFF or {"state": "ON"}: anything longer is not one
PASSWORD_SUFFIX = ".mqtt-password"  # beside the CurveZMQ keys: USER.mqtt-password, made by `smarthome keys`
ACL_FILE = "mosquitto.acl"  # beside them too, made from the config by `smarthome keys`


@dataclass(frozen=True)
class Look:
    """How a body type shows in Home Assistant: the component, and the template that reads its state."""

    component: str
    value_template: str
    attributes_template: str | None = None


# The mirror's state is its summary line (a sensor's state is short text); each label is also an attribute.
LOOKS: dict[type[msgspec.Struct], Look] = {
    LightState: Look("switch", "{{ value_json.state }}"),
    ApplianceStatus: Look("binary_sensor", "{{ 'ON' if value_json.status else 'OFF' }}"),
    MirrorView: Look(
        "sensor",
        "{{ value_json.view | dictsort | map('join', '=') | join(' ') }}",
        "{{ value_json.view | tojson }}",
    ),
}


@dataclass(frozen=True)
class Entity:
    """One service's state as one Home Assistant entity of its own device."""

    service: str
    topic: str
    body_type: type[msgspec.Struct]
    component: str
    discovery_topic: str
    discovery: bytes  # the retained discovery config


class MqttHome:
    """Where each part of the home is on the MQTT broker, for one bridge of `config`."""

    def __init__(self, config: Config, bridge: str) -> None:
        spec = config.services[bridge]
        assert isinstance(spec, MqttBridgeConfig)
        self.bridge, self.spec, self.prefix = bridge, spec, spec.topic_prefix
        self.bridge_availability = self.availability_topic(bridge)
        self.command_topic = f"{self.prefix}/{spec.commands.topic}"
        shown = set(spec.subscribe.topics) or set(config.topics)
        self.entities = {
            service: self._entity(config, service, publish.topic)
            for service, publish in config.publishers().items()
            if publish.topic in shown
            and config.topics[publish.topic] is Kind.STATE
            and config.body_type(publish.topic) in LOOKS
        }

    def state_topic(self, service: str, topic: str) -> str:
        return f"{self.prefix}/{service}/{topic}"

    def availability_topic(self, service: str) -> str:
        return f"{self.prefix}/{service}/availability"

    def _entity(self, config: Config, service: str, topic: str) -> Entity:
        body_type = config.body_type(topic)
        assert body_type is not None
        look = LOOKS[body_type]
        switched = isinstance(spec := config.services[service], LightSwitchConfig) and spec.commands is not None
        component = look.component if switched or look.component != "switch" else "binary_sensor"
        state_topic = self.state_topic(service, topic)
        discovery: dict[str, Any] = {
            "name": None,  # the entity is its device: Home Assistant shows the device's name
            "unique_id": f"{self.prefix}_{service}_{topic}",  # from names alone: the same after every restart
            "state_topic": state_topic,
            "value_template": look.value_template,
            "availability": [{"topic": self.bridge_availability}, {"topic": self.availability_topic(service)}],
            "availability_mode": "all",  # the bridge is up and it hears the service
            "device": {
                "identifiers": [f"{self.prefix}_{service}"],
                "name": config.services[service].name.title(),
                "manufacturer": "smarthome",
                "model": config.services[service].role,
                "sw_version": __version__,
            },
            "origin": {"name": "smarthome mqtt-bridge", "sw_version": __version__},
        }
        if component == "switch":
            discovery["command_topic"] = self.command_topic
        if component in ("switch", "binary_sensor"):
            discovery |= {"payload_on": ON, "payload_off": OFF}
        if look.attributes_template:
            discovery |= {"json_attributes_topic": state_topic, "json_attributes_template": look.attributes_template}
        where = f"{self.spec.discovery_prefix}/{component}/{self.prefix}/{service}/config"
        return Entity(service, topic, body_type, component, where, json.dumps(discovery).encode())

    def command(self, payload: bytes) -> LightState:
        """The light-set command an MQTT payload asks for: ON, OFF (Home Assistant's) or a light state's JSON.
        ValueError, in one line, for anything else."""
        wanted = 'ON, OFF or {"state": "ON"|"OFF"}'
        if len(payload) > MAX_COMMAND_BYTES:
            raise ValueError(f"{len(payload)} bytes, not {wanted}")
        text = payload.decode("utf-8", errors="replace").strip()
        try:
            return msgspec.convert(msgspec.json.decode(text) if text.startswith("{") else {"state": text}, LightState)
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise ValueError(f"{text!r} is not {wanted}") from None

    def acl(self) -> str:
        """Mosquitto's ACL: the bridge writes the home's topics and Home Assistant's discovery; the client user
        reads them and writes the command topic, nothing else; nobody else is let in."""
        prefix, discovery, client = self.prefix, self.spec.discovery_prefix, self.spec.client_user
        return (
            f"# Made by `smarthome keys` from the config: who may do what on the MQTT broker (docs/home-assistant.md)\n"
            f"user {self.bridge}\ntopic readwrite {prefix}/#\ntopic readwrite {discovery}/#\n\n"
            f"user {client}\ntopic read {prefix}/#\ntopic read {discovery}/#\ntopic write {self.command_topic}\n"
        )

    def users(self) -> list[str]:
        """The MQTT users, each with a password file: the bridge itself and its client (Home Assistant)."""
        return [self.bridge, self.spec.client_user]


def bridges(config: Config) -> list[MqttHome]:
    return [MqttHome(config, name) for name, s in config.services.items() if isinstance(s, MqttBridgeConfig)]


def write_acl(directory: Path, homes: list[MqttHome], owner: int | None) -> None:
    """Mosquitto's ACL beside the keys, made again from the config each time (it holds no secret)."""
    path, temporary = directory / ACL_FILE, directory / f".{ACL_FILE}.new"
    temporary.write_text("\n".join(home.acl() for home in homes))
    os.chmod(temporary, 0o644)
    if owner is not None:
        os.chown(temporary, owner, -1)
    temporary.replace(path)


class Shown:
    """What the bridge shows of each service: its senders heard and not forgotten [L2, F1], and their states'
    JSON. A service is online while one of its senders is; its state is its newest sender's."""

    def __init__(self) -> None:
        self.alive: dict[str, set[str]] = {}
        self.states: dict[str, dict[str, bytes]] = {}  # service -> sender -> state, the newest last

    def heard(self, service: str, sender: str) -> bool:
        """`sender` was heard; whether that is news (it was not alive)."""
        senders = self.alive.setdefault(service, set())
        news = sender not in senders
        senders.add(sender)
        return news

    def took(self, service: str, sender: str, state: bytes) -> None:
        held = self.states.setdefault(service, {})
        held.pop(sender, None)
        held[sender] = state

    def forgot(self, service: str, sender: str) -> bytes | None:
        """`sender` is gone: the state to show now, if it was the one shown and another sender's is left."""
        self.alive.get(service, set()).discard(sender)
        held = self.states.get(service, {})
        was_newest = bool(held) and next(reversed(held)) == sender
        held.pop(sender, None)
        return self.state(service) if was_newest else None

    def online(self, service: str) -> str:
        return ONLINE if self.alive.get(service) else OFFLINE

    def state(self, service: str) -> bytes | None:
        held = self.states.get(service)
        return next(reversed(held.values())) if held else None
