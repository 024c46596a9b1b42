"""Host-side tools, the `mosquitto_sub` / `mosquitto_pub` of the stack: `smarthome sub`, `pub` and `light`,
and `smarthome dashboard`, which prints the dashboard's address with its access token.

They read the same config as the services and reach them on 127.0.0.1 (local mode, or the ports compose
publishes on loopback). In broker wiring they talk to the broker; in direct wiring `sub` connects to every
publisher and `pub` can reach only a service that binds a subscriber (the light switch's commands).

Which config: --config, else $SMARTHOME_CONFIG, else the config in $SMARTHOME_CONFIG_DIR (the shipped
`config/` by default, the directory compose mounts) whose stack answers on this host, else `smarthome.yml`.
Compose publishes container port N on host port $SMARTHOME_HOST_PORT_N (default N); the tools read the
same variables, so they reach the stack those variables started.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import sysconfig
from pathlib import Path

import msgspec

from smarthome.core.config import (
    Config,
    LightSwitchConfig,
    Publish,
    Subscribe,
    host_port,
    load_config,
)
from smarthome.core.envelope import HEARTBEAT_TOPIC, LightState, Message
from smarthome.core.identity import Identity
from smarthome.core.keys import token_file, token_names
from smarthome.core.problems import explain
from smarthome.core.runtime import Loop

CONFIG_DIR_ENV = "SMARTHOME_CONFIG_DIR"  # also the directory compose mounts into the containers
DEFAULT_CONFIG = "smarthome.yml"
SEND_LINGER_MS = 2000  # how long `pub` may take to flush its one message after a subscriber is there
COUNT_TIMEOUT = 10.0  # seconds `sub --count N` waits by default: a steady stack sends only its current states
PROBE_TIMEOUT = 0.2  # seconds a TCP connect to a loopback port may take (a closed one refuses at once)
log = logging.getLogger("smarthome.tools")


class UsageError(Exception):
    """A bad argument or an unreachable stack: printed as one line, exit code 1."""


# --- which stack, and where the host reaches it ---


def config_dir() -> Path:
    """$SMARTHOME_CONFIG_DIR, else the shipped configs: the checkout's `config/`, or where a wheel put them."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    checkout = Path(__file__).resolve().parents[3] / "config"
    return checkout if checkout.is_dir() else Path(sysconfig.get_path("data")) / "share" / "smarthome"


def host_endpoint(endpoint: str) -> str:
    """Where the host reaches a service's endpoint: 127.0.0.1, on the host port compose publishes it at."""
    return f"tcp://127.0.0.1:{host_port(endpoint.rsplit(':', 1)[1])}"


def answering(endpoints: list[str]) -> list[str]:
    """The endpoints where something accepts a TCP connection."""
    found = []
    for endpoint in endpoints:
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), PROBE_TIMEOUT).close()
            found.append(endpoint)
        except OSError:
            pass
    return found


def choose_config(explicit: str | None) -> str:
    """`explicit` (--config or $SMARTHOME_CONFIG), else the config whose stack answers on this host
    (`smarthome.yml` first), else `smarthome.yml`."""
    if explicit:
        log.info("config %s", explicit)
        return explicit
    directory = config_dir()
    for path in sorted(directory.glob("*.yml"), key=lambda p: (p.name != DEFAULT_CONFIG, p.name)):
        if up := answering(subscribe_endpoints(load_config(path), [])):
            log.info("config %s: its stack answers at %s", path, up[0])
            return str(path)
    log.info("config %s: no stack answers at the endpoints of any config in %s", directory / DEFAULT_CONFIG, directory)
    return str(directory / DEFAULT_CONFIG)


def hint(config: Config) -> str:
    """What to try when nothing answers at the endpoints of `config`."""
    others = sorted(p for p in config_dir().glob("*.yml") if p.resolve() != Path(config.path).resolve())
    tries = " or ".join(f"--config {os.path.relpath(p)}" for p in others)
    return "is the stack running? (docker compose up, or smarthome local)" + (f"; or try {tries}" if tries else "")


def subscribe_endpoints(config: Config, topics: list[str]) -> list[str]:
    if config.broker:
        return [host_endpoint(config.broker.subscribers)]
    every = not topics or HEARTBEAT_TOPIC in topics  # every publisher sends heartbeats
    publishers = config.publishers().values()
    return [host_endpoint(p.bind) for p in publishers if p.bind and (every or p.topic in topics)]


def publish_endpoint(config: Config, topic: str) -> str:
    for service in config.services.values():
        for _, spec in service.sockets():
            if isinstance(spec, Subscribe) and spec.bind and topic in spec.topics:
                return host_endpoint(spec.bind)
    if config.broker:
        return host_endpoint(config.broker.publishers)
    raise UsageError(f"in this wiring nothing accepts messages on '{topic}' from outside; use the broker wiring")


# --- topics and bodies ---


def check_topics(config: Config, topics: list[str], *also: str) -> None:
    known = set(config.topics) | set(also)
    if unknown := sorted(set(topics) - known):
        raise UsageError(f"unknown topic '{unknown[0]}' (known: {', '.join(sorted(known))})")


def parse_body(config: Config, topic: str, body_json: str) -> dict:
    """The JSON object in `body_json`, checked against the body type of `topic`."""
    try:
        body = json.loads(body_json)
    except json.JSONDecodeError as exc:
        raise UsageError(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise UsageError(f"the body must be a JSON object, got: {body_json}")
    if kind := config.body_type(topic):
        try:
            msgspec.convert(body, kind)
        except msgspec.ValidationError as exc:
            problem, where = explain(exc)
            at = f" at '{where}'" if where else ""
            raise UsageError(f"invalid body for '{topic}' ({kind.__name__}): {problem}{at}") from None
    return body


# --- the commands ---


def sub(config: Config, topics: list[str], count: int, timeout: float | None, as_json: bool) -> int:
    """Print every message on `topics` (all if none): topic, sender, seq, body, or one JSON object per line.

    Stops after `count` messages (each sender's current state, re-sent to a newcomer, counts) or after
    `timeout` seconds (default: 10 with a count, never without; 0: never); too few messages is exit 1.
    """
    check_topics(config, topics, HEARTBEAT_TOPIC)
    timeout = (COUNT_TIMEOUT if count else 0) if timeout is None else timeout
    endpoints = subscribe_endpoints(config, topics)
    if not answering(endpoints):
        log.warning("nothing answers at %s yet: %s", ", ".join(endpoints), hint(config))
    service = Loop(Identity("smarthome-sub", config, label="sub"))
    received = 0
    outcome = 0

    def show(message: Message, _: None) -> None:
        nonlocal received
        if as_json:
            line = msgspec.json.encode(message).decode()
        else:
            line = f"{message.topic} {message.sender} {message.seq} {json.dumps(message.body)}"
        try:
            print(line, flush=True)
        except BrokenPipeError:  # the reader has gone (`| head -1`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail
            service.stop()
            return
        received += 1
        if received == count:
            service.stop()

    def time_up() -> None:
        nonlocal outcome
        if received < count:
            outcome = 1
            why = hint(config) if not answering(endpoints) else "a steady stack sends each current state once"
            print(f"smarthome: got {received} of {count} messages within {timeout:g}s: {why}", file=sys.stderr)
        service.stop()

    service.subscribe(Subscribe(topics, connect=endpoints), None, show)
    if timeout:
        service.call_later(timeout, time_up)
    return service.run() or outcome


def pub(config: Config, topic: str, body_json: str, timeout: float) -> int:
    """Publish one message on `topic` once something subscribes to it there, so it is never lost [P3]."""
    check_topics(config, [topic])
    endpoint = publish_endpoint(config, topic)
    body = parse_body(config, topic, body_json)
    service = Loop(Identity("smarthome-cli", config, label="pub"))
    outcome = 0

    def delivered() -> None:  # after the heartbeat that tells our life [P2]: the message is taken [L3]
        if publisher.outbox.seq:
            return  # sent already: another subscription in the same wakeup [K3]
        publisher.publish(body)
        log.info("reached a subscriber to '%s' at %s", topic, endpoint)
        service.stop()

    def give_up() -> None:
        nonlocal outcome
        outcome = 1
        why = "" if answering([endpoint]) else f": {hint(config)}"
        print(f"smarthome: nothing at {endpoint} subscribed to '{topic}' within {timeout:g}s{why}", file=sys.stderr)
        service.stop()

    # Sent once, when the first subscriber to the topic is there: a command is never sent again [K3].
    publisher = service.publisher(Publish(topic, connect=endpoint), on_listener=delivered)
    publisher.sock.linger = SEND_LINGER_MS  # the one socket here that must deliver before it closes
    service.call_later(timeout, give_up)
    return service.run() or outcome


def light(config: Config, state: str, timeout: float) -> int:
    """Switch the light(s) from outside: a LightState on the light switches' commands topic."""
    switches = [s for s in config.services.values() if isinstance(s, LightSwitchConfig) and s.commands]
    topics = {s.commands.topics[0] for s in switches}
    if not topics:
        raise UsageError("no light switch in this config takes commands")
    return pub(config, topics.pop(), json.dumps({"state": LightState(state.upper()).state}), timeout)


def dashboard(config: Config) -> int:
    """Print the dashboard's address with its access token: opened once, the page keeps the token as a cookie."""
    webs = token_names(config)
    if not webs:
        raise UsageError(f"{config.path} has no web service")
    for name in webs:
        path = token_file(config, name)
        try:
            token = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"no dashboard token in {path} ({exc}): has the stack started once?") from None
        print(f"http://127.0.0.1:{host_port(str(config.services[name].port))}/?token={token}")
    return 0


def tool_logging(verbose: bool) -> None:
    """Tools print their results on stdout; their own lines and the runtime's go to stderr (-v: from info)."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="smarthome: %(message)s", force=True)
