"""smarthome: run the smart-home services, or poke at a running stack from the host.

smarthome run SERVICE            one service of the config (what each container runs)
smarthome local                  every service as a local process on 127.0.0.1 (no Docker)
smarthome sub [TOPIC ...]        print every message: topic, sender, seq, body
smarthome pub TOPIC JSON         publish one message, once something subscribes to it
smarthome light on|off           switch the light(s) from outside
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

import zmq

from smarthome.core.config import ConfigError, load_config
from smarthome.core.identity import Identity
from smarthome.core.logs import setup_logging
from smarthome.tools import cli, local

# role -> the module whose `main(me, spec) -> exit code` runs it, imported only when that role runs
# (the web forwarder's aiohttp would otherwise add ~18 MiB to every appliance).
ENTRYPOINTS = {
    "light-switch": "smarthome.roles.light_switch",
    "appliance": "smarthome.roles.appliance",
    "mirror": "smarthome.roles.mirror",
    "radio": "smarthome.roles.radio",
    "broker": "smarthome.roles.broker",
    "web": "smarthome.web.forwarder",
}


def run(name: str, config_path: str | None) -> int:
    config = load_config(config_path)
    spec = config.services.get(name)
    if spec is None:
        raise ConfigError(config.path, "services", f"no service named '{name}' (have: {', '.join(config.services)})")
    setup_logging()
    return importlib.import_module(ENTRYPOINTS[spec.role]).main(Identity(name, config), spec)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")  # one line, not usage + error


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="smarthome", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config file (default: $SMARTHOME_CONFIG or config/smarthome.yml)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("run", help="run one service").add_argument("service")
    commands.add_parser("local", help="run every service locally")
    sub = commands.add_parser("sub", help="print messages")
    sub.add_argument("topics", nargs="*", metavar="TOPIC")
    sub.add_argument("--count", type=int, default=0, help="exit after this many messages")
    sub.add_argument("--timeout", type=float, default=0, help="with --count: give up (exit 1) after this long")
    pub = commands.add_parser("pub", help="publish one message")
    pub.add_argument("topic")
    pub.add_argument("body", metavar="JSON")
    light = commands.add_parser("light", help="switch the light")
    light.add_argument("state", choices=["on", "off"])
    for tool in (pub, light):
        tool.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a subscriber")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.command == "run":
            return run(args.service, args.config)
        if args.command == "local":
            return local.run_all(args.config)
        config = load_config(args.config)
        cli.quiet_logging()
        if args.command == "sub":
            return cli.sub(config, args.topics, args.count, args.timeout)
        if args.command == "pub":
            return cli.pub(config, args.topic, args.body, args.timeout)
        return cli.light(config, args.state, args.timeout)
    except ConfigError as exc:
        print(f"smarthome: config error: {exc}", file=sys.stderr)
        return 2
    except cli.UsageError as exc:
        print(f"smarthome: {exc}", file=sys.stderr)
        return 1
    except zmq.ZMQError as exc:
        print(f"smarthome: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
