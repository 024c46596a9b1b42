"""The MQTT bridge: the home on an MQTT broker, for Home Assistant and any MQTT client (docs/home-assistant.md).

ZeroMQ -> MQTT: each state heard, retained, in its typed form [V4], with Home Assistant's discovery and each
service's availability (online while a sender of it is alive [L2], offline once forgotten [F1]). MQTT -> ZeroMQ:
ON or OFF on the command topic becomes one light-set command [K3], as the dashboard sends it, when a light switch
listens [P3]; nothing else MQTT says reaches the home.
"""

from __future__ import annotations

import logging

import msgspec

from smarthome.core.config import MqttBridgeConfig
from smarthome.core.envelope import Message
from smarthome.core.identity import Identity
from smarthome.core.keys import KeyRing, KeysError, keys_dir
from smarthome.core.logs import escape, peer_warnings
from smarthome.core.runtime import Loop
from smarthome.mqtt.client import Mqtt
from smarthome.mqtt.home import ONLINE, PASSWORD_SUFFIX, MqttHome, Shown

log = logging.getLogger(__name__)


def main(me: Identity, spec: MqttBridgeConfig) -> int:
    loop = Loop(me)
    home, shown = MqttHome(me.config, me.name), Shown()
    mqtt = Mqtt(home, password(me), loop.call_soon_threadsafe)
    commands = loop.publisher(spec.commands)
    settled = False  # one heartbeat_interval in: every service alive has been heard [P1, P2]

    def on_message(message: Message, _: None) -> None:
        service = message.sender.partition("@")[0]
        if (entity := home.entities.get(service)) is None:
            return
        if shown.heard(service, message.sender):
            log.info("%s heard %s: online on MQTT", spec.name, message.sender)
            mqtt.publish(home.availability_topic(service), ONLINE)
        if message.topic != entity.topic:
            return  # its heartbeat
        try:
            state = msgspec.json.encode(msgspec.convert(message.body, entity.body_type))
        except msgspec.ValidationError as exc:
            peer_warnings.log("%s dropped %s's '%s': %s", spec.name, message.sender, message.topic, exc, peer=service)
            return
        shown.took(service, message.sender, state)
        mqtt.publish(home.state_topic(service, entity.topic), state)

    def on_gone(sender: str) -> None:
        service = sender.partition("@")[0]
        if service in home.entities:
            if (state := shown.forgot(service, sender)) is not None:  # another instance's, newest now
                mqtt.publish(home.state_topic(service, home.entities[service].topic), state)
            log.info("%s forgot %s: %s is %s on MQTT", spec.name, sender, service, shown.online(service))
            mqtt.publish(home.availability_topic(service), shown.online(service))

    def on_connected() -> None:
        """Everything, retained: a restarted broker keeps nothing, and Home Assistant needs it all."""
        mqtt.publish(home.bridge_availability, ONLINE)
        for service, entity in home.entities.items():
            mqtt.publish(entity.discovery_topic, entity.discovery)
            if (state := shown.state(service)) is not None:
                mqtt.publish(home.state_topic(service, entity.topic), state)
            if settled or shown.online(service) == ONLINE:
                mqtt.publish(home.availability_topic(service), shown.online(service))
        log.info("%s connected to MQTT broker %s: %d entities", spec.name, spec.mqtt_broker, len(home.entities))

    def on_command(payload: bytes) -> None:
        try:
            command = home.command(payload)
        except ValueError as exc:
            peer_warnings.log("%s dropped an MQTT command: %s", spec.name, escape(exc), peer="mqtt")
            return
        if not commands.listened:
            log.warning("%s dropped an MQTT command: no light switch listens", spec.name)
            return
        commands.publish(command)
        log.info("%s sent %s %s from MQTT", spec.name, spec.commands.topic, command.state)

    def settle() -> None:  # what an earlier life of the bridge left retained is no longer said of services unheard
        nonlocal settled
        settled = True
        for service in home.entities:
            mqtt.publish(home.availability_topic(service), shown.online(service))

    def tell_over_limit() -> None:
        if dropped := mqtt.told_over_limit():
            log.warning("%s dropped %d MQTT commands over the rate limit (%g/s)", spec.name, dropped, spec.command_rate)

    mqtt.on_connected, mqtt.on_command = on_connected, on_command
    loop.subscribe(spec.subscribe, None, on_message, on_gone, heartbeats=True)
    loop.call_later(me.config.heartbeat_interval, settle)
    loop.every(1.0, tell_over_limit)
    mqtt.start()
    try:
        return loop.run()
    finally:
        mqtt.stop()


def password(me: Identity) -> str:
    """Our MQTT password: `smarthome keys` made it (compose's keys service); else it is made now (local mode)."""
    ring = KeyRing(keys_dir(me.config))
    try:
        if not ring.token_path(me.name, PASSWORD_SUFFIX).exists():
            ring.ensure_token(me.name, suffix=PASSWORD_SUFFIX)
        return ring.token(me.name, PASSWORD_SUFFIX).decode()
    except (OSError, UnicodeDecodeError) as exc:  # missing, unreadable, or not the ASCII we write
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise KeysError(str(ring.directory), "", f"no MQTT password for {me.name}: {problem}") from None
