"""smarthome: run the smart-home services, or poke at a running stack from the host.

smarthome run SERVICE            one service of the config (what each container runs)
smarthome local                  every service as a local process on 127.0.0.1 (no Docker)
smarthome sub [TOPIC ...]        print every message: topic, sender, seq, body
smarthome pub TOPIC JSON         publish one message, once something subscribes to it
smarthome light on|off           switch the light(s) from outside
smarthome dashboard              print the dashboard's address with its access token (open it once)
smarthome schema                 print the config's JSON Schema
smarthome keys                   make the CurveZMQ keys (and dashboard tokens) that are missing

sub, pub, light and dashboard use --config, else $SMARTHOME_CONFIG, else the config (in $SMARTHOME_CONFIG_DIR, default
the shipped config/) whose stack answers on this host; -v says which config and endpoints they reached.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import zmq

from smarthome import __version__
from smarthome.core.config import CONFIG_ENV, Config, ConfigError, SetupError, json_schema, load_config
from smarthome.core.identity import Identity
from smarthome.core.keys import KeyRing, KeysError, key_names, keys_dir, token_names
from smarthome.core.logs import setup_logging
from smarthome.mqtt.home import PASSWORD_SUFFIX, bridges, write_acl
from smarthome.tools import cli, local

# role -> the module whose `main(me, spec) -> exit code` runs it, imported only when that role runs
# (the web forwarder's aiohttp would otherwise add to every appliance's memory: tests/bench/stack_lifecycle.py).
ENTRYPOINTS = {
    "light-switch": "smarthome.roles.light_switch",
    "appliance": "smarthome.roles.appliance",
    "mirror": "smarthome.roles.mirror",
    "radio": "smarthome.roles.radio",
    "broker": "smarthome.roles.broker",
    "web": "smarthome.web.forwarder",
    "mqtt-bridge": "smarthome.mqtt.bridge",
}


def run(name: str, config_path: str) -> int:
    config = load_config(config_path)
    spec = config.services.get(name)
    if spec is None:
        raise ConfigError(config.path, "services", f"no service named '{name}' (have: {', '.join(config.services)})")
    setup_logging()
    return importlib.import_module(ENTRYPOINTS[spec.role]).main(Identity(name, config), spec)


def make_keys(config: Config, owner: int | None) -> int:
    ring = KeyRing(keys_dir(config))
    try:
        created = ring.ensure(key_names(config), owner)
        created += [f"{name}.token" for name in token_names(config) if ring.ensure_token(name, owner)]
        homes = bridges(config)  # each MQTT user's password, and Mosquitto's ACL (docs/home-assistant.md)
        users = [user for home in homes for user in home.users()]
        created += [user + PASSWORD_SUFFIX for user in users if ring.ensure_token(user, owner, PASSWORD_SUFFIX)]
        if homes:
            write_acl(ring.directory, homes, ring.host_owner() if owner is not None else None)
    except OSError as exc:
        raise KeysError(str(ring.directory), "", f"cannot write keys: {exc.strerror or exc}") from None
    print(f"smarthome: keys in {ring.directory}: made {', '.join(created) or 'none, all there'}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")  # one line, not usage + error


def at_least(minimum: int, kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number of `kind` no lower than `minimum`."""

    def convert(text: str) -> float:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return convert


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="smarthome", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"smarthome {__version__}")
    parser.add_argument("--config", help="config file (default: $SMARTHOME_CONFIG, else see above)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say which config and endpoints are used")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("run", help="run one service").add_argument("service", help="a service name in the config")
    commands.add_parser("local", help="run every service locally")
    commands.add_parser("schema", help="print the config's JSON Schema")
    keys = commands.add_parser("keys", help="make the CurveZMQ keys that are missing ($SMARTHOME_KEYS, else ./keys)")
    keys.add_argument("--owner", type=int, help="as root: the uid the services run as, to own their secret keys")
    sub = commands.add_parser("sub", help="print messages")
    sub.add_argument("topics", nargs="*", metavar="TOPIC", help="topics to print, 'heartbeat' too (default: all)")
    sub.add_argument("--count", type=at_least(1, int), default=0, help="exit after this many messages")
    sub.add_argument(
        "--timeout",
        type=at_least(0, float),
        help=f"exit after this many seconds; with --count, exit 1 if fewer arrived "
        f"(default: {cli.COUNT_TIMEOUT:g} with --count, else never; 0: never)",
    )
    sub.add_argument("--json", action="store_true", help="one JSON object per line: topic, sender, boot, seq, ts, body")
    pub = commands.add_parser("pub", help="publish one message")
    pub.add_argument("topic", help="a topic a service subscribes to, e.g. light-set")
    pub.add_argument("body", metavar="JSON", help="""the body, checked against the topic's type: '{"state": "ON"}'""")
    commands.add_parser("dashboard", help="print the dashboard's address, with its access token")
    light = commands.add_parser("light", help="switch the light")
    light.add_argument("state", choices=["on", "off"], help="on or off")
    for tool in (pub, light):
        tool.add_argument("--timeout", type=at_least(0, float), default=5.0, help="seconds to wait for a subscriber")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.command == "schema":
            print(json.dumps(json_schema(), indent=2))
            return 0
        config_path = args.config or os.environ.get(CONFIG_ENV)
        if args.command in ("run", "local", "keys"):
            config_path = config_path or str(cli.config_dir() / cli.DEFAULT_CONFIG)
            if args.command == "keys":
                return make_keys(load_config(config_path), args.owner)
            return run(args.service, config_path) if args.command == "run" else local.run_all(config_path)
        cli.tool_logging(args.verbose)
        config = load_config(cli.choose_config(config_path))
        if args.command == "sub":
            return cli.sub(config, args.topics, args.count, args.timeout, args.json)
        if args.command == "dashboard":
            return cli.dashboard(config)
        if args.command == "pub":
            return cli.pub(config, args.topic, args.body, args.timeout)
        return cli.light(config, args.state, args.timeout)
    except SetupError as exc:
        print(f"smarthome: {exc.kind}: {exc}", file=sys.stderr)
        return 2
    except (cli.UsageError, zmq.ZMQError) as exc:
        print(f"smarthome: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before a loop took over the signal: no traceback
        return 130


if __name__ == "__main__":
    sys.exit(main())
