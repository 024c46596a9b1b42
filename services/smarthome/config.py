"""Load and validate the smart-home config: one schema for every service, every error one line.

The schema is a set of msgspec Structs (unknown keys, missing keys and wrong types are rejected by
msgspec itself); the checks msgspec cannot express (endpoint syntax, bind xor connect, subscriptions to
topics nobody publishes) follow in `_check_wiring`. Any failure raises ConfigError naming the file,
the key path and the problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml

from smarthome.schema import explain

CONFIG_ENV = "SMARTHOME_CONFIG"
LOOPBACK_ENV = "SMARTHOME_LOOPBACK"  # "1": run every endpoint on 127.0.0.1 (local no-Docker mode)

Topic = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]*$")]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
_ENDPOINT = re.compile(r"^tcp://(?P<host>\*|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<port>\d{1,5})$")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class Publish(_Strict):
    """One publisher socket: binds in direct wiring, connects to a broker in broker wiring."""

    topic: Topic
    bind: str | None = None
    connect: str | None = None


class Subscribe(_Strict):
    """One subscriber socket, connected to every endpoint that publishes its topics."""

    topics: list[Topic]
    connect: list[str]


class _Service(_Strict, tag_field="role"):
    name: str  # display name used in log lines, e.g. "COFFEE MAKER"


class LightSwitchConfig(_Service, tag="light-switch"):
    publish: Publish
    toggle_period: Seconds  # 0 = never toggle


class ApplianceConfig(_Service, tag="appliance"):
    subscribe: Subscribe
    publish: Publish
    prep_time: Seconds


class MirrorConfig(_Service, tag="mirror"):
    subscribe: Subscribe


ServiceConfig = LightSwitchConfig | ApplianceConfig | MirrorConfig


class _Settings(_Strict):
    poll_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=1000)]  # bounds how long SIGTERM waits
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024)]  # larger peers are disconnected
    services: dict[str, Any]


class Config(msgspec.Struct, frozen=True):
    path: str
    poll_timeout_ms: int
    max_message_bytes: int
    services: dict[str, ServiceConfig]

    def publisher_of(self, topic: str) -> tuple[str, ServiceConfig] | None:
        """The service that publishes `topic`, or None."""
        for name, service in self.services.items():
            publish = getattr(service, "publish", None)
            if publish is not None and publish.topic == topic:
                return name, service
        return None


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

    settings = _convert(path, "", raw, _Settings)
    services = {
        name: _convert(path, f"services.{name}", entry, ServiceConfig) for name, entry in settings.services.items()
    }
    config = Config(path, settings.poll_timeout_ms, settings.max_message_bytes, services)
    _check_wiring(config)
    if os.environ.get(LOOPBACK_ENV) == "1":
        config = _on_loopback(config)
    return config


def _convert(path: str, key: str, raw: Any, schema: Any) -> Any:
    try:
        return msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        problem, where = explain(exc)
        full_key = ".".join(k for k in (key, where) if k) or "(top level)"
        raise ConfigError(path, full_key, problem) from None


def _check_wiring(config: Config) -> None:
    published = {s.publish.topic for s in config.services.values() if hasattr(s, "publish")}
    for name, service in config.services.items():
        key = f"services.{name}"
        if isinstance(service, LightSwitchConfig | ApplianceConfig):
            publish = service.publish
            if (publish.bind is None) == (publish.connect is None):
                raise ConfigError(config.path, f"{key}.publish", "needs exactly one of 'bind' or 'connect'")
            side = "bind" if publish.bind else "connect"
            _check_endpoint(config.path, f"{key}.publish.{side}", publish.bind or publish.connect or "")
        if isinstance(service, ApplianceConfig | MirrorConfig):
            subscribe = service.subscribe
            if not subscribe.connect:
                raise ConfigError(config.path, f"{key}.subscribe.connect", "needs at least one endpoint")
            for i, endpoint in enumerate(subscribe.connect):
                _check_endpoint(config.path, f"{key}.subscribe.connect[{i}]", endpoint, connect=True)
            for i, topic in enumerate(subscribe.topics):
                if topic not in published:
                    raise ConfigError(
                        config.path, f"{key}.subscribe.topics[{i}]", f"topic '{topic}' is published by no service"
                    )


def _check_endpoint(path: str, key: str, endpoint: str, connect: bool = False) -> None:
    match = _ENDPOINT.match(endpoint)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ConfigError(path, key, f"malformed endpoint '{endpoint}': expected tcp://HOST:PORT")
    if connect and match["host"] == "*":
        raise ConfigError(path, key, f"cannot connect to '{endpoint}': '*' is only for bind")


def _on_loopback(config: Config) -> Config:
    """Every host becomes 127.0.0.1, so the same wiring runs as local processes."""

    def local(endpoint: str | None) -> str | None:
        return _ENDPOINT.sub(r"tcp://127.0.0.1:\g<port>", endpoint) if endpoint else endpoint

    def localise(service: Any) -> Any:
        changes: dict[str, Any] = {}
        if hasattr(service, "publish"):
            p = service.publish
            changes["publish"] = msgspec.structs.replace(p, bind=local(p.bind), connect=local(p.connect))
        if hasattr(service, "subscribe"):
            s = service.subscribe
            changes["subscribe"] = msgspec.structs.replace(s, connect=[local(e) for e in s.connect])
        return msgspec.structs.replace(service, **changes)

    return msgspec.structs.replace(config, services={n: localise(s) for n, s in config.services.items()})
