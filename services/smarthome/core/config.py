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
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml

from smarthome.core.schema import explain

CONFIG_ENV = "SMARTHOME_CONFIG"
LOOPBACK_ENV = "SMARTHOME_LOOPBACK"  # "1": run every endpoint on 127.0.0.1 (local no-Docker mode)
DOCKER_HOST = "docker-host"  # in web.token_free_peers: the container's default gateway, i.e. the Docker host

Topic = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]*$")]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
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
    name: str  # display name used in log lines, e.g. "COFFEE MAKER"


class LightSwitchConfig(_Service, tag="light-switch"):
    publish: Publish
    toggle_period: Seconds  # 0 = never toggle
    commands: Subscribe | None = None  # where `smarthome light on|off` and the dashboard reach it


class ApplianceConfig(_Service, tag="appliance"):
    subscribe: Subscribe
    publish: Publish
    prep_time: Seconds


class MirrorConfig(_Service, tag="mirror"):
    subscribe: Subscribe
    publish: Publish | None = None  # where it shows its view to others (the dashboard)


class RadioConfig(_Service, tag="radio"):
    subscribe: Subscribe


class BrokerConfig(_Service, tag="broker"):
    publishers: str  # XSUB bind endpoint that every publisher connects to
    subscribers: str  # XPUB bind endpoint that every subscriber connects to


class WebConfig(_Service, tag="web"):
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]  # HTTP: the dashboard, /ws and /healthz
    subscribe: Subscribe  # every topic to forward (empty list: all)
    commands: Publish  # where browser commands go: the light switches' commands topic
    client_queue: Annotated[int, msgspec.Meta(ge=1)]  # messages a browser may fall behind before it is dropped
    offline_after: Annotated[int, msgspec.Meta(ge=1)]  # missed heartbeats before a sender is shown offline
    # Who may reach the dashboard (web/guard.py). Loopback first: beyond it, /ws needs the access token.
    bind_host: str = "127.0.0.1"  # an IP address; `smarthome local` always uses 127.0.0.1
    allowed_hosts: list[HostName] = []  # Host header names besides 127.0.0.1, localhost, [::1]
    allowed_origins: list[Origin] = []  # page origins for /ws besides the one the browser reached us at
    access_token_file: str | None = None  # a file (e.g. a compose secret) holding the token for /ws
    token_free_peers: list[str] = []  # peer IPs/networks that need no token; "docker-host": the Docker host
    max_browsers: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 32
    command_rate: Annotated[float, msgspec.Meta(gt=0, le=100_000)] = 2.0  # commands per second per browser...
    command_burst: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5  # ...after a burst of this many
    header_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0  # seconds to send a request's headers


ServiceConfig = LightSwitchConfig | ApplianceConfig | MirrorConfig | RadioConfig | BrokerConfig | WebConfig


class _Settings(_Strict):
    poll_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=1000)]  # bounds how long SIGTERM waits
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)]  # larger peers are disconnected
    heartbeat_interval: Annotated[float, msgspec.Meta(gt=0)]  # seconds between every publisher's heartbeats
    services: dict[str, Any]


class Config(msgspec.Struct, frozen=True):
    path: str
    poll_timeout_ms: int
    max_message_bytes: int
    heartbeat_interval: float
    services: dict[str, ServiceConfig]

    def publishers(self) -> dict[str, Publish]:
        """Service name -> its publisher socket, for every service that has one."""
        return {name: p for name, s in self.services.items() if (p := getattr(s, "publish", None)) is not None}

    def publisher_of(self, topic: str) -> tuple[str, ServiceConfig] | None:
        """The (first) service that publishes `topic`, or None."""
        name = next((name for name, p in self.publishers().items() if p.topic == topic), None)
        return (name, self.services[name]) if name else None

    @property
    def broker(self) -> BrokerConfig | None:
        return next((s for s in self.services.values() if isinstance(s, BrokerConfig)), None)


class ConfigError(Exception):
    """A config problem, printed as one line: FILE: KEY.PATH: PROBLEM."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, validate and (in loopback mode) localise the config at `path` or $SMARTHOME_CONFIG."""
    path = str(path or os.environ.get(CONFIG_ENV) or "config/smarthome.yml")
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ConfigError(path, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None

    if os.environ.get(LOOPBACK_ENV) == "1":
        raw = _on_loopback(raw)
    settings = _convert(path, "", raw, _Settings)
    services = {
        name: _convert(path, f"services.{name}", entry, ServiceConfig) for name, entry in settings.services.items()
    }
    config = Config(path, settings.poll_timeout_ms, settings.max_message_bytes, settings.heartbeat_interval, services)
    _check_wiring(config)
    for name, service in services.items():
        if isinstance(service, WebConfig):
            _check_web(path, f"services.{name}", service)
    return config


def _convert(path: str, key: str, raw: Any, schema: Any) -> Any:
    try:
        return msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        problem, where = explain(exc)
        full_key = ".".join(k for k in (key, where) if k) or "(top level)"
        raise ConfigError(path, full_key, problem) from None


def _check_wiring(config: Config) -> None:
    published = {p.topic for p in config.publishers().values()}
    for name, service in config.services.items():
        for key, endpoint, connecting in _endpoints(service, f"services.{name}"):
            _check_endpoint(config.path, key, endpoint, connecting)
        for field in ("publish", "subscribe", "commands"):
            spec = getattr(service, field, None)
            key = f"services.{name}.{field}"
            if isinstance(spec, Publish) and (spec.bind is None) == (spec.connect is None):
                raise ConfigError(config.path, key, "needs exactly one of 'bind' or 'connect'")
            if isinstance(spec, Subscribe) and (spec.bind is None) == (not spec.connect):
                raise ConfigError(config.path, key, "needs either 'bind' or at least one 'connect' endpoint")
        # Commands come from outside the config (CLI, dashboard); every other subscription needs a publisher.
        subscribe = getattr(service, "subscribe", None)
        for i, topic in enumerate(subscribe.topics if subscribe else []):
            if topic not in published:
                raise ConfigError(
                    config.path, f"services.{name}.subscribe.topics[{i}]", f"topic '{topic}' is published by no service"
                )


def _check_web(path: str, key: str, web: WebConfig) -> None:
    """A dashboard bound beyond loopback answers other machines: they need a token, or an explicit exemption."""
    try:
        beyond_loopback = not ipaddress.ip_address(web.bind_host).is_loopback
    except ValueError:
        raise ConfigError(path, f"{key}.bind_host", f"'{web.bind_host}' is not an IP address") from None
    for i, peer in enumerate(web.token_free_peers):
        try:
            if peer != DOCKER_HOST:
                ipaddress.ip_network(peer, strict=False)
        except ValueError:
            problem = f"'{peer}' is neither an IP address, a network nor '{DOCKER_HOST}'"
            raise ConfigError(path, f"{key}.token_free_peers[{i}]", problem) from None
    if beyond_loopback and not (web.access_token_file or web.token_free_peers):
        problem = f"binding {web.bind_host} (beyond loopback) needs 'access_token_file'"
        raise ConfigError(path, f"{key}.bind_host", problem)


def _endpoints(service: Any, key: str) -> list[tuple[str, str, bool]]:
    """Every (key path, endpoint, is_connect) of a service, wherever the schema puts them."""
    found = []
    for field in service.__struct_fields__:
        value = getattr(service, field)
        if field in ("publishers", "subscribers", "bind") and isinstance(value, str):
            found.append((f"{key}.{field}", value, False))
        elif field == "connect" and isinstance(value, str):
            found.append((f"{key}.{field}", value, True))
        elif field == "connect" and isinstance(value, list):
            found += [(f"{key}.{field}[{i}]", endpoint, True) for i, endpoint in enumerate(value)]
        elif isinstance(value, Publish | Subscribe):
            found += _endpoints(value, f"{key}.{field}")
    return found


def _check_endpoint(path: str, key: str, endpoint: str, connect: bool) -> None:
    match = _ENDPOINT.match(endpoint)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ConfigError(path, key, f"malformed endpoint '{endpoint}': expected tcp://HOST:PORT")
    if connect and match["host"] == "*":
        raise ConfigError(path, key, f"cannot connect to '{endpoint}': '*' is only for bind")


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
