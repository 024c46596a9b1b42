"""Host-side tools, the `mosquitto_sub` / `mosquitto_pub` of the stack: `smarthome sub`, `pub` and `light`.

They read the same config as the services and reach them on 127.0.0.1 (local mode, or the ports compose
publishes on loopback). In broker wiring they talk to the broker; in direct wiring `sub` connects to every
publisher and `pub` can reach only a service that binds a subscriber (the light switch's commands).
"""

from __future__ import annotations

import json
import logging
import sys

from smarthome.core.config import Config, LightSwitchConfig, Publish, Subscribe, to_loopback
from smarthome.core.envelope import LightState, Message
from smarthome.core.identity import Identity
from smarthome.core.runtime import Loop

SEND_LINGER_MS = 2000  # how long `pub` may take to flush its one message after a subscriber is there


class UsageError(Exception):
    """A bad argument or an unreachable stack: printed as one line, exit code 1."""


def subscribe_endpoints(config: Config, topics: list[str]) -> list[str]:
    if config.broker:
        return [to_loopback(config.broker.subscribers)]
    publishers = config.publishers().values()
    return [to_loopback(p.bind) for p in publishers if p.bind and (not topics or p.topic in topics)]


def publish_endpoint(config: Config, topic: str) -> str:
    for service in config.services.values():
        for _, spec in service.sockets():
            if isinstance(spec, Subscribe) and spec.bind and topic in spec.topics:
                return to_loopback(spec.bind)
    if config.broker:
        return to_loopback(config.broker.publishers)
    raise UsageError(f"in this wiring nothing accepts messages on '{topic}' from outside; use the broker wiring")


def known_topics(config: Config) -> set[str]:
    topics = set()
    for service in config.services.values():
        for _, spec in service.sockets():
            topics |= {spec.topic} if isinstance(spec, Publish) else set(spec.topics)
    return topics


def check_topics(config: Config, topics: list[str]) -> None:
    unknown = sorted(set(topics) - known_topics(config))
    if unknown:
        raise UsageError(f"unknown topic '{unknown[0]}' (known: {', '.join(sorted(known_topics(config)))})")


def sub(config: Config, topics: list[str], count: int, timeout: float) -> int:
    """Print every message on `topics` (all if none): topic, sender, seq, body. Stops after `count` if given."""
    check_topics(config, topics)
    service = Loop(Identity("smarthome-sub", config, label="sub"))
    received = 0
    outcome = 0

    def show(message: Message, _: None) -> None:
        nonlocal received
        print(f"{message.topic} {message.sender} {message.seq} {json.dumps(message.body)}", flush=True)
        received += 1
        if received == count:
            service.stop()

    def give_up() -> None:
        nonlocal outcome
        outcome = 1
        print(f"smarthome: got {received} of {count} messages within {timeout:g}s", file=sys.stderr)
        service.stop()

    service.subscribe(Subscribe(topics, connect=subscribe_endpoints(config, topics)), None, show)
    if timeout:
        service.call_later(timeout, give_up)
    return service.run() or outcome


def pub(config: Config, topic: str, body_json: str, timeout: float) -> int:
    """Publish one message on `topic` once something subscribes to it there, so it is never lost."""
    check_topics(config, [topic])
    try:
        body = json.loads(body_json)
    except json.JSONDecodeError as exc:
        raise UsageError(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise UsageError(f"the body must be a JSON object, got: {body_json}")
    endpoint = publish_endpoint(config, topic)
    service = Loop(Identity("smarthome-cli", config, label="pub"))
    outcome = 0

    def give_up() -> None:
        nonlocal outcome
        outcome = 1
        print(f"smarthome: nothing at {endpoint} subscribed to '{topic}' within {timeout:g}s", file=sys.stderr)
        service.stop()

    # The publisher re-sends its last message to each new subscriber: publish now, stop after the first one.
    publisher = service.publisher(Publish(topic, connect=endpoint), on_listener=service.stop)
    publisher.sock.linger = SEND_LINGER_MS  # the one socket here that must deliver before it closes
    publisher.publish(body)
    service.call_later(timeout, give_up)
    return service.run() or outcome


def light(config: Config, state: str, timeout: float) -> int:
    """Switch the light(s) from outside: a LightState on the light switches' commands topic."""
    switches = [s for s in config.services.values() if isinstance(s, LightSwitchConfig) and s.commands]
    topics = {s.commands.topics[0] for s in switches}
    if not topics:
        raise UsageError("no light switch in this config takes commands")
    return pub(config, topics.pop(), json.dumps({"state": LightState(state.upper()).state}), timeout)


def quiet_logging() -> None:
    """Tools print their results on stdout; the runtime's own log lines go to stderr, warnings only."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="smarthome: %(message)s")
