#!/usr/bin/env python3
"""Render the compose files as a Docker Swarm stack file, or deploy it.

    python3 swarm/stack.py render [--direct] [--name NAME]   print the stack file (JSON, which is YAML)
    python3 swarm/stack.py deploy [--direct] [--name NAME]   docker stack deploy it as NAME (default smarthome)

The stack is the compose files of a wiring (broker, the default, or direct) plus docker-compose.swarm.yml,
merged by `docker compose config`. Compose writes the Compose Specification, which `docker stack deploy`
reads only in its older 3.x form; this script bridges the two and changes nothing else: it drops `name`,
`build` (swarm never builds), `develop`, `profiles` and unset keys, writes published ports as numbers and CPU limits as
strings, and refuses a port bound to one host address (swarm cannot bind one: the swarm file must give it a
host-mode port, on purpose, or none), rather than widen it.

CurveZMQ: the keys in ./keys (made by the image's `smarthome keys` when missing) go in as swarm objects: each
service gets only its own secret key (a secret, at /run/secrets/, never in the image or an env var) and
everyone's public keys (configs, at /keys/); the dashboard its access token (a secret too). Their names carry
a hash of the content: configs and secrets cannot change in place, so a new key is a new object.

The image is given by ID (SMARTHOME_IMAGE, default: the ID of smarthome:latest here), and deployed with
--resolve-image never: a node without a registry starts the image it was given, which must already be there
(`docker save smarthome:latest | docker -H NODE load`).
Only the Python standard library: it runs on any machine with Docker and python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEYS = ROOT / "keys"
WIRINGS = {  # compose arguments of each wiring
    "direct": ["-f", "docker-compose.yml", "-f", "docker-compose.swarm.yml"],
    "broker": [
        *("-f", "docker-compose.yml", "-f", "docker-compose.broker.yml", "-f", "docker-compose.swarm.yml"),
        *("--profile", "broker"),  # the swarm settings of the services only the broker wiring has
    ],
}


class StackError(Exception):
    pass


def image_id(reference: str = "smarthome:latest") -> str:
    found = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", reference], capture_output=True, text=True
    )
    if found.returncode != 0:
        raise StackError(f"no image {reference} here: build it first (docker compose build)")
    return found.stdout.strip()


def to_stack(project: dict[str, Any]) -> dict[str, Any]:
    """The compose project, as `docker stack deploy` reads it."""
    stack = {key: value for key, value in project.items() if key != "name" and not key.startswith("x-")}
    stack["services"].pop("keys", None)  # compose's one-shot: here the keys come as secrets and configs
    for name, service in stack["services"].items():
        for key in [key for key, value in service.items() if value is None or key in ("build", "profiles", "develop")]:
            del service[key]  # unset keys are null in compose's output; the 3.x schema rejects them
        service.pop("depends_on", None)  # only on `keys`, gone; swarm has no start order anyway
        for port in service.get("ports", []):
            if "host_ip" in port:
                raise StackError(
                    f"service {name}: port {port['target']} is bound to {port['host_ip']}, which swarm cannot do; "
                    "give it a host-mode port in docker-compose.swarm.yml (or none)"
                )
            port["published"] = int(port["published"])
        for amounts in service.get("deploy", {}).get("resources", {}).values():
            if "cpus" in amounts:
                amounts["cpus"] = str(amounts["cpus"])
            amounts.pop("pids", None)  # compose's pids limit: not in the stack format of Engine 20.10
    return stack


def make_keys(image: str, wiring: str) -> None:
    """The CurveZMQ keys that are missing in ./keys, made by the image itself (as compose's `keys` service)."""
    config = "smarthome.broker.yml" if wiring == "broker" else "smarthome.yml"
    config_dir = Path(os.environ.get("SMARTHOME_CONFIG_DIR") or ROOT / "config").resolve()
    command = [
        *("docker", "run", "--rm", "--network", "none", "--user", "root", "--entrypoint", "python"),
        *("-v", f"{KEYS}:/keys", "-v", f"{config_dir}:/etc/smarthome:ro"),
        *("-e", "SMARTHOME_KEYS=/keys", "-e", f"SMARTHOME_CONFIG=/etc/smarthome/{config}"),
        *(image, "-m", "smarthome", "keys", "--owner", "10001"),
    ]
    made = subprocess.run(command, capture_output=True, text=True)
    if made.returncode != 0:
        raise StackError(f"cannot make the CurveZMQ keys: {made.stderr.strip()}")


def with_keys(stack: dict[str, Any]) -> dict[str, Any]:
    """Each service its own secret key, and everyone's public keys, as swarm objects named by content."""

    def named(kind: str, path: Path) -> str:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        stack.setdefault(kind, {})[f"{path.name.replace('.', '-')}-{digest}"] = {"file": str(path)}
        return f"{path.name.replace('.', '-')}-{digest}"

    public = [(named("configs", path), path.name) for path in sorted(KEYS.glob("*.key"))]
    for name, service in stack["services"].items():
        secret = named("secrets", KEYS / f"{name}.key_secret")
        service["secrets"] = [{"source": secret, "target": "smarthome.key_secret", "uid": "10001", "mode": 0o400}]
        service["configs"] = service.get("configs", []) + [{"source": s, "target": f"/keys/{f}"} for s, f in public]
        service.setdefault("environment", {})["SMARTHOME_SECRET_KEY"] = "/run/secrets/smarthome.key_secret"
        if (token := KEYS / f"{name}.token").exists():  # a dashboard's access token: a secret too
            mounted = {"source": named("secrets", token), "target": "smarthome.token", "uid": "10001", "mode": 0o400}
            service["secrets"].append(mounted)
            service["environment"]["SMARTHOME_TOKEN_FILE"] = "/run/secrets/smarthome.token"
    return stack


def render(wiring: str, name: str) -> str:
    image = os.environ.get("SMARTHOME_IMAGE") or image_id()
    command = ["docker", "compose", *WIRINGS[wiring], "-p", name, "config", "--format", "json"]
    merged = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "SMARTHOME_IMAGE": image}
    )
    if merged.returncode != 0:
        raise StackError(f"{' '.join(command)}: {merged.stderr.strip()}")
    make_keys(image, wiring)
    return json.dumps(with_keys(to_stack(json.loads(merged.stdout))), indent=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["render", "deploy"])
    parser.add_argument("--direct", action="store_true", help="the tutorial's direct wiring (default: broker)")
    parser.add_argument("--name", default="smarthome", help="stack name (default: smarthome)")
    args = parser.parse_args(argv)
    try:
        stack = render("direct" if args.direct else "broker", args.name)
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    if args.action == "render":
        print(stack)
        return 0
    deploy = ["docker", "stack", "deploy", "--compose-file", "-", "--resolve-image", "never", args.name]
    return subprocess.run(deploy, input=stack, text=True).returncode


if __name__ == "__main__":
    sys.exit(main())
