"""Load and validate the smart-home config: one schema for every service, every error one line.

The schema is a set of msgspec Structs (unknown keys, missing keys and wrong types are rejected by
msgspec itself); the checks msgspec cannot express (endpoint syntax, bind xor connect, subscriptions to
topics nobody publishes) follow in `_check_wiring`. Any failure raises ConfigError naming the file,
the key path and the problem.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar

import msgspec
import yaml

from smarthome.core.envelope import (
    HEARTBEAT_TOPIC,
    MAX_VIEW_LABELS,
    TOPIC_NAME,
    ApplianceStatus,
    LightState,
    MirrorView,
)
from smarthome.core.problems import explain
from smarthome.core.protocol import MAX_INSTANCES, MAX_SENDERS, Kind

CONFIG_ENV = "SMARTHOME_CONFIG"
HOST_PORT_ENV = "SMARTHOME_HOST_PORT_{}"  # the host port compose publishes container port {} on
LOOPBACK_ENV = "SMARTHOME_LOOPBACK"  # "1": run every endpoint on 127.0.0.1 (local no-Docker mode)

MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; a bigger file is refused before it is parsed
MAX_CONFIG_DEPTH = 32  # nesting: ours is 5 deep; a 5,000-deep list would exhaust Python's stack
MAX_NUMBER_CHARS = 40  # digits of one number: none of ours needs more, and Python refuses past 4,300
MIN_TOGGLE_PERIOD = 0.05  # seconds: the light switch toggles at most 20 times a second (0 = never)
Topic = Annotated[str, msgspec.Meta(pattern=rf"^{TOPIC_NAME}$")]
ServiceName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,39}$")]  # also names its key file
DisplayName = Annotated[str, msgspec.Meta(pattern=r"^[^\x00-\x1f\x7f]{1,40}$")]  # printable: it goes in every log line
Seconds = Annotated[float, msgspec.Meta(ge=0, le=86_400)]
HostName = Annotated[str, msgspec.Meta(pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")]
Origin = Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+$")]
_ENDPOINT = re.compile(r"^tcp://(?P<host>\*|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<port>\d{1,5})$")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class Publish(_Strict):
    """One publisher socket: binds in direct wiring, connects to the broker in broker wiring."""

    topic: Topic
    bind: str | None = None
    connect: str | None = None


class Subscribe(_Strict):
    """One subscriber socket: connects to the publishers (or the broker), or binds to be published to."""

    topics: list[Topic]
    connect: list[str] = []
    bind: str | None = None


class _Service(_Strict, tag_field="role"):
    name: DisplayName  # display name used in log lines, e.g. "COFFEE MAKER"
    body: ClassVar[type[msgspec.Struct] | None] = None  # what the role publishes

    @property
    def role(self) -> str:
        return self.__struct_config__.tag

    def sockets(self) -> Iterator[tuple[str, Publish | Subscribe]]:
        """(field, spec) of every publisher and subscriber socket this service has."""
        for field in self.__struct_fields__:
            if isinstance(spec := getattr(self, field), Publish | Subscribe):
                yield field, spec

    def endpoints(self) -> Iterator[tuple[str, str, bool]]:
        """(key path below the service, endpoint, is_connect) of every endpoint, wherever the schema puts it."""
        for field, spec in self.sockets():
            if spec.bind:
                yield f"{field}.bind", spec.bind, False
            connect = [spec.connect] if isinstance(spec.connect, str) else spec.connect or []
            for i, endpoint in enumerate(connect):
                yield f"{field}.connect" + (f"[{i}]" if isinstance(spec, Subscribe) else ""), endpoint, True


class LightSwitchConfig(_Service, tag="light-switch"):
    body = LightState  # and what its commands carry
    publish: Publish
    toggle_period: Seconds  # 0 = never toggle
    commands: Subscribe | None = None  # where `smarthome light on|off` and the dashboard reach it


class ApplianceConfig(_Service, tag="appliance"):
    body = ApplianceStatus
    subscribe: Subscribe
    publish: Publish
    prep_time: Seconds


class MirrorConfig(_Service, tag="mirror"):
    body = MirrorView
    subscribe: Subscribe
    publish: Publish | None = None  # where it shows its view to others (the dashboard)


class RadioConfig(_Service, tag="radio"):
    subscribe: Subscribe


class BrokerConfig(_Service, tag="broker"):
    publishers: str  # XSUB bind endpoint that every publisher connects to
    subscribers: str  # XPUB bind endpoint that every subscriber connects to

    def endpoints(self) -> Iterator[tuple[str, str, bool]]:
        yield "publishers", self.publishers, False
        yield "subscribers", self.subscribers, False


class WebConfig(_Service, tag="web"):
    port: Annotated[int, msgspec.Meta(ge=1024, le=65535)]  # HTTP: the dashboard, /ws and /healthz
    subscribe: Subscribe  # every topic to forward (empty list: all)
    commands: Publish  # where browser commands go: the light switches' commands topic
    client_queue: Annotated[int, msgspec.Meta(ge=1, le=100_000)]  # messages a browser may lag before it is dropped
    # Who may reach the dashboard (web/guard.py): its own page, with the access token, on loopback too.
    bind_host: str = "127.0.0.1"  # an IP address; `smarthome local` always uses 127.0.0.1
    allowed_hosts: list[HostName] = []  # Host header names besides 127.0.0.1, localhost, [::1]
    allowed_origins: list[Origin] = []  # page origins for /ws besides the one the browser reached us at
    access_token_file: str | None = None  # the token for /ws; default: NAME.token beside the keys, made if missing
    max_browsers: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 32
    browsers_per_address: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 8  # of max_browsers, from one address
    command_rate: Annotated[float, msgspec.Meta(gt=0, le=100_000)] = 2.0  # commands per second per client...
    command_burst: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5  # ...after a burst of this many
    header_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0  # seconds to send a request's headers
    ping_interval: Annotated[float, msgspec.Meta(ge=0.1, le=300)] = 20.0  # a browser silent to pings is closed


MqttLevel = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]  # one MQTT topic level, no wildcard


class MqttBridgeConfig(_Service, tag="mqtt-bridge"):
    """The home on an MQTT broker, for Home Assistant (docs/home-assistant.md); it commands like the dashboard."""

    subscribe: Subscribe  # the states to show there (empty list: all)
    commands: Publish  # where MQTT commands go: the light switches' commands topic
    mqtt_broker: str  # tcp://HOST:PORT of the MQTT broker
    topic_prefix: MqttLevel = "smarthome"  # states at PREFIX/SERVICE/TOPIC, the command at PREFIX/COMMAND-TOPIC
    discovery_prefix: MqttLevel = "homeassistant"  # Home Assistant's MQTT discovery prefix
    client_user: ServiceName = "home-assistant"  # the MQTT user that may read the home and send its command
    keepalive: Annotated[int, msgspec.Meta(ge=1, le=600)] = 5  # seconds: a silent MQTT broker is left after 1.5x
    command_rate: Annotated[float, msgspec.Meta(gt=0, le=100_000)] = 2.0  # MQTT commands per second...
    command_burst: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5  # ...after a burst of this many


ServiceConfig = (
    LightSwitchConfig | ApplianceConfig | MirrorConfig | RadioConfig | BrokerConfig | WebConfig | MqttBridgeConfig
)


class Zmtp(_Strict):
    """ZMTP heartbeats on every connection, in seconds: a peer silent for `heartbeat_timeout` (SIGKILL, pause,
    partition) is dropped, and ZeroMQ reconnects as soon as it is reachable again instead of waiting for TCP."""

    heartbeat_ivl: Annotated[float, msgspec.Meta(ge=0.05, le=60)]  # how often each side pings
    heartbeat_timeout: Annotated[float, msgspec.Meta(ge=0.1, le=600)]  # no traffic for this long: connection dropped
    heartbeat_ttl: Annotated[float, msgspec.Meta(ge=0.1, le=600)]  # how long the peer may wait for our pings


class Settings(_Strict):
    """The config file's top level, as validated; each service is validated on its own after (to name it)."""

    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024, le=16 << 20)]  # larger peers are disconnected
    heartbeat_interval: Annotated[float, msgspec.Meta(ge=0.05, le=60)]  # seconds between each publisher's heartbeats
    offline_after: Annotated[int, msgspec.Meta(ge=1, le=100)]  # missed heartbeats before a sender is gone
    zmtp: Zmtp
    topics: dict[Topic, Kind]  # every topic on the wire and its kind (docs/protocol.md, K1-K6)
    services: dict[ServiceName, Any]
    curve: bool = True  # CurveZMQ on every connection: encrypted, and only known keys get in
    # [A2] alive instances per service a receiver takes: a stolen key cannot invent a thousand appliances
    max_instances: Annotated[int, msgspec.Meta(ge=1, le=MAX_SENDERS)] = MAX_INSTANCES


class Config(Settings, frozen=True):
    """A loaded config: the file's settings, each service typed by its role, and the file it came from."""

    services: dict[str, ServiceConfig]
    path: str = ""

    @property
    def gone_after(self) -> float:
        """Seconds of silence after which a sender is taken for gone."""
        return self.heartbeat_interval * self.offline_after

    def publishers(self) -> dict[str, Publish]:
        """Service name -> its publisher socket, for every service that has one."""
        return {name: spec for name, s in self.services.items() for field, spec in s.sockets() if field == "publish"}

    def body_type(self, topic: str) -> type[msgspec.Struct] | None:
        """The body `topic` carries: what its publisher's role sends; a commands topic, what the light switch's
        commands carry (light states). None: a topic of no role's (the forwarder's own events)."""
        for service in self.services.values():
            for field, spec in service.sockets():
                if field == "commands" and topic in (spec.topics if isinstance(spec, Subscribe) else [spec.topic]):
                    return LightSwitchConfig.body
        publisher = self.publisher_of(topic)
        return publisher[1].body if publisher else None

    def publisher_of(self, topic: str) -> tuple[str, ServiceConfig] | None:
        """The (first) service that publishes `topic`, or None."""
        name = next((name for name, p in self.publishers().items() if p.topic == topic), None)
        return (name, self.services[name]) if name else None

    @property
    def broker(self) -> BrokerConfig | None:
        return next((s for s in self.services.values() if isinstance(s, BrokerConfig)), None)

    def binder_of(self, endpoint: str) -> str | None:
        """The service that binds the port `endpoint` connects to (or the host port it is published on):
        whose key a client pins for it."""
        port = endpoint.rpartition(":")[2]
        for name, service in self.services.items():
            for _, bound, connecting in service.endpoints():
                if not connecting and port in (bound.rpartition(":")[2], host_port(bound.rpartition(":")[2])):
                    return name
        return None


def host_port(port: str) -> str:
    """The host port compose publishes container port `port` on: $SMARTHOME_HOST_PORT_<port>, default the same."""
    return os.environ.get(HOST_PORT_ENV.format(port), port)


class SetupError(Exception):
    """What stops a service or a tool before it runs, printed as one line, `smarthome: KIND: WHERE: PROBLEM`, with
    exit code 2. Each subclass says what failed."""

    kind = "setup error"

    def __init__(self, where: str, key: str, problem: str) -> None:
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


class ConfigError(SetupError):
    """A config problem: FILE: KEY.PATH: PROBLEM."""

    kind = "config error"


class SettingError(SetupError):
    """A SMARTHOME_* environment variable with a value it cannot take: VARIABLE: PROBLEM."""

    kind = "setting error"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, validate and (in loopback mode) localise the config at `path` or $SMARTHOME_CONFIG."""
    path = str(path or os.environ.get(CONFIG_ENV) or "config/smarthome.yml")
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(path, "", f"larger than {MAX_CONFIG_BYTES >> 10} KiB: not a config")
        source = text.decode("utf-8", errors="replace")
        raw = yaml.load(source, _PlainYaml)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        where = f"line {source.count(chr(10), 0, exc.position) + 1}"
        raise ConfigError(path, where, f"not valid YAML: character #x{exc.character:04x}: {exc.reason}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ConfigError(path, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None

    if os.environ.get(LOOPBACK_ENV) == "1":
        raw = _on_loopback(raw)
    if isinstance(raw, dict) and isinstance(raw.get("topics"), dict):  # msgspec would say only "topics[...]"
        for topic, kind in raw["topics"].items():
            _convert(path, f"topics.{topic}", kind, Kind)
    settings = _convert(path, "", raw, Settings)
    services = {
        name: _convert(path, f"services.{name}", entry, ServiceConfig) for name, entry in settings.services.items()
    }
    config = Config(**msgspec.structs.asdict(settings) | {"services": services, "path": path})
    _check_wiring(config)
    for name, service in services.items():
        if isinstance(service, WebConfig):
            _check_web(path, f"services.{name}", service)
        if isinstance(service, MqttBridgeConfig):
            _check_mqtt(config, f"services.{name}", service)
    return config


class _PlainYaml(yaml.SafeLoader):
    """Safe YAML without aliases, tags, deep nesting or numbers of a thousand digits: every input is a config
    or a YAMLError naming its line (an alias bomb, `!!binary`, a stack-deep list, a huge integer, 2001-13-44)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases are not allowed", event.start_mark)
        if getattr(event, "tag", None) is not None:  # a config is plain data; tags reach odd constructors
            raise yaml.composer.ComposerError(None, None, f"tags are not allowed ('{event.tag}')", event.start_mark)
        if self.depth >= MAX_CONFIG_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_CONFIG_DEPTH}", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        number = isinstance(node, yaml.ScalarNode) and node.tag.endswith(("int", "float"))
        if number and len(node.value) > MAX_NUMBER_CHARS:
            problem = f"a number of {len(node.value)} characters (at most {MAX_NUMBER_CHARS})"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark)
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # the resolver's pattern matched, the constructor did not
            raise yaml.constructor.ConstructorError(None, None, f"{node.value!r}: {exc}", node.start_mark) from None


def _convert(path: str, key: str, raw: Any, schema: Any) -> Any:
    try:
        return msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        problem, where = explain(exc)
        full_key = ".".join(k for k in (key, where) if k) or "(top level)"
        raise ConfigError(path, full_key, problem) from None


def _check_wiring(config: Config) -> None:
    if HEARTBEAT_TOPIC in config.topics:
        raise ConfigError(config.path, f"topics.{HEARTBEAT_TOPIC}", "reserved for heartbeats: pick another name")
    published = {p.topic for p in config.publishers().values()}
    for name, service in config.services.items():
        if isinstance(service, MirrorConfig) and len(service.subscribe.topics) * config.max_instances > MAX_VIEW_LABELS:
            problem = f"{config.max_instances} instances of each of {name}'s topics make a view of more than "
            raise ConfigError(config.path, "max_instances", problem + f"{MAX_VIEW_LABELS} labels")
        if isinstance(service, LightSwitchConfig) and 0 < service.toggle_period < MIN_TOGGLE_PERIOD:
            problem = f"{service.toggle_period:g} is too fast: 0 (never) or at least {MIN_TOGGLE_PERIOD:g}"
            raise ConfigError(config.path, f"services.{name}.toggle_period", problem)
        for key, endpoint, connecting in service.endpoints():
            _check_endpoint(config.path, f"services.{name}.{key}", endpoint, connecting)
        for field, spec in service.sockets():
            key = f"services.{name}.{field}"
            _check_kinds(config, key, spec, commands=field == "commands")
            if isinstance(spec, Publish) and (spec.bind is None) == (spec.connect is None):
                raise ConfigError(config.path, key, "needs exactly one of 'bind' or 'connect'")
            if isinstance(spec, Subscribe) and (spec.bind is None) == (not spec.connect):
                raise ConfigError(config.path, key, "needs either 'bind' or at least one 'connect' endpoint")
            # Commands come from outside the config (CLI, dashboard); every other subscription needs a publisher.
            if field != "subscribe":
                continue
            for i, topic in enumerate(spec.topics):
                if topic not in published:
                    raise ConfigError(config.path, f"{key}.topics[{i}]", f"topic '{topic}' is published by no service")
        commands = dict(service.sockets()).get("commands")
        if not config.curve and isinstance(commands, Subscribe) and commands.bind and not _on_this_host(commands.bind):
            problem = "commands reachable beyond 127.0.0.1 need 'curve: true'"
            raise ConfigError(config.path, f"services.{name}.commands.bind", problem)
    for name, service in config.services.items():  # a typo in a port, and whose CurveZMQ key would a client pin?
        for key, endpoint, connecting in service.endpoints():
            if connecting and config.binder_of(endpoint) is None:
                raise ConfigError(config.path, f"services.{name}.{key}", f"no service binds the port of '{endpoint}'")


def _check_kinds(config: Config, key: str, spec: Publish | Subscribe, commands: bool) -> None:
    """Every topic is declared [K1], and a command topic is carried by `commands` sockets and nothing else [K6]."""
    topics = (
        [(f"{key}.topic", spec.topic)] if isinstance(spec, Publish) else list(_indexed(f"{key}.topics", spec.topics))
    )
    for where, topic in topics:
        kind = config.topics.get(topic)
        if kind is None:
            raise ConfigError(config.path, where, f"topic '{topic}' is not declared under 'topics'")
        if commands != (kind is Kind.COMMAND):
            carried = "only 'commands' sockets carry commands" if not commands else "'commands' carry command topics"
            raise ConfigError(config.path, where, f"'{topic}' is a {kind} topic: {carried}")


def _indexed(key: str, items: list[str]) -> Iterator[tuple[str, str]]:
    return ((f"{key}[{i}]", item) for i, item in enumerate(items))


def _check_web(path: str, key: str, web: WebConfig) -> None:
    try:
        ipaddress.ip_address(web.bind_host)
    except ValueError:
        raise ConfigError(path, f"{key}.bind_host", f"'{web.bind_host}' is not an IP address") from None


def _check_mqtt(config: Config, key: str, bridge: MqttBridgeConfig) -> None:
    _check_endpoint(config.path, f"{key}.mqtt_broker", bridge.mqtt_broker, connect=True)
    if bridge.client_user in config.services:  # each MQTT user's password is a file named after it
        problem = f"'{bridge.client_user}' is a service's name: pick another"
        raise ConfigError(config.path, f"{key}.client_user", problem)


def _check_endpoint(path: str, key: str, endpoint: str, connect: bool) -> None:
    match = _ENDPOINT.match(endpoint)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ConfigError(path, key, f"malformed endpoint '{endpoint}': expected tcp://HOST:PORT")
    if connect and match["host"] == "*":
        raise ConfigError(path, key, f"cannot connect to '{endpoint}': '*' is only for bind")
    if not connect and int(match["port"]) < 1024:
        raise ConfigError(path, key, f"port {match['port']} is privileged (below 1024): pick another")


def _on_this_host(endpoint: str) -> bool:
    """Whether `endpoint` binds a loopback address only (a name or '*' may be reached from other machines)."""
    match = _ENDPOINT.match(endpoint)
    try:
        return match is not None and ipaddress.ip_address(match["host"]).is_loopback
    except ValueError:
        return False


def to_loopback(endpoint: str) -> str:
    """The same port on 127.0.0.1: how the host reaches a service (local mode, ports published on loopback)."""
    return _ENDPOINT.sub(r"tcp://127.0.0.1:\g<port>", endpoint)


def _on_loopback(raw: Any) -> Any:
    """The raw config with every endpoint's host made 127.0.0.1 (ports stay, so they must differ)."""
    if isinstance(raw, dict):
        return {key: _on_loopback(value) for key, value in raw.items()}
    if isinstance(raw, list):
        return [_on_loopback(value) for value in raw]
    return to_loopback(raw) if isinstance(raw, str) and _ENDPOINT.match(raw) else raw


def json_schema() -> dict[str, Any]:
    """The config file's JSON Schema, from the types that validate it: config/smarthome.schema.json, which the
    shipped configs name in their first line, so a YAML editor (yaml-language-server) completes and checks them.
    `smarthome schema` prints it; a test keeps the shipped file current. Unlike the loader, which validates each
    service on its own after the top level, it describes the whole file at once, every service typed."""
    fields = [
        (f.name, dict[str, ServiceConfig] if f.name == "services" else f.type)
        if f.default is msgspec.NODEFAULT
        else (f.name, f.type, f.default)
        for f in msgspec.structs.fields(Settings)
    ]
    document = msgspec.defstruct("SmarthomeConfig", fields, forbid_unknown_fields=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **msgspec.json.schema(document)}
