"""Project invariants: CI runs the README's test command; no port is published beyond loopback, except the
swarm stack's few host-mode ports, which swarm cannot bind to one address, on the manager only."""

from __future__ import annotations

import re

import yaml
from support import BROKER_CONFIG, ROOT, SHIPPED_CONFIG, loopback_config


def readme_commands() -> list[str]:
    block = re.search(r"## The two commands\n+```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README has no 'The two commands' block"
    return [line.split("#")[0].strip() for line in block[1].splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command() -> None:
    start, test, fast = readme_commands()
    assert start == "docker compose up --build"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines
    assert fast == "bash .ci/test-fast"  # the fast tier without root; test_cli checks it collects without Docker


class ComposeLoader(yaml.SafeLoader):
    """Compose files use `!reset` (clear an inherited list) and `!override` (replace it); read them as lists."""


ComposeLoader.add_constructor("!reset", lambda loader, node: [])
ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_sequence(node, deep=True))
SWARM_FILE = "docker-compose.swarm.yml"


def test_ports_are_published_on_loopback_only() -> None:
    files = [path for path in ROOT.glob("docker-compose*.yml") if path.name != SWARM_FILE]
    assert len(files) == 2
    for path in files:
        for name, service in yaml.load(path.read_text(), ComposeLoader)["services"].items():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{path.name}: {name} publishes {port} beyond loopback"


def test_test_configs_move_every_port(tmp_path) -> None:
    for source in (SHIPPED_CONFIG, BROKER_CONFIG):
        shipped, moved = ports_in(source), ports_in(loopback_config(tmp_path, source))
        assert shipped and len(moved) == len(shipped)
        assert not shipped & moved, f"{source.name}: ports not moved: {shipped & moved}"


def ports_in(config) -> set[int]:
    """Every endpoint port and `port` key in a config file."""
    found: set[int] = set()

    def walk(node, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and (match := re.match(r"^tcp://[^:]+:(\d+)$", node)):
            found.add(int(match[1]))
        elif key == "port":
            found.add(node)

    walk(yaml.safe_load(config.read_text()))
    return found


def test_the_swarm_stack_publishes_only_the_hub_ports_in_host_mode_on_the_manager() -> None:
    services = yaml.load((ROOT / SWARM_FILE).read_text(), ComposeLoader)["services"]
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["mode"] == "host", f"{name}: {port} goes through the ingress mesh, on every node"
            assert service["deploy"]["placement"]["constraints"] == ["node.role == manager"], name
            published[port["published"]] = name
    assert published == {8080: "web", 5559: "broker", 5560: "broker"}
