"""Command line: `smarthome run SERVICE` (what each container runs) and `smarthome local` (all, no Docker)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import zmq

from smarthome import appliance, light_switch, local, mirror
from smarthome.config import ConfigError, load_config
from smarthome.runtime import Service, setup_logging

ENTRYPOINTS: dict[str, Callable[[Service, Any], None]] = {
    "light-switch": light_switch.main,
    "appliance": appliance.main,
    "mirror": mirror.main,
}


def run(name: str, config_path: str | None) -> int:
    config = load_config(config_path)
    if name not in config.services:
        raise ConfigError(config.path, "services", f"no service named '{name}' (have: {', '.join(config.services)})")
    setup_logging()
    service = Service(name, config)
    ENTRYPOINTS[type(service.spec).__struct_config__.tag](service, service.spec)
    return service.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smarthome", description=__doc__)
    parser.add_argument("--config", help="config file (default: $SMARTHOME_CONFIG or config/smarthome.yml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run one service of the config").add_argument("service")
    commands.add_parser("local", help="run every service as a local process on 127.0.0.1")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run(args.service, args.config)
        return local.run_all(args.config)
    except ConfigError as exc:
        print(f"smarthome: config error: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:
        print(f"smarthome: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
