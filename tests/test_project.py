"""Project invariants: CI runs the README's test command; no port is published beyond loopback, except the
swarm stack's few host-mode ports, which swarm cannot bind to one address, on the manager only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import smarthome
import yaml

from tests.support.base import BROKER_CONFIG, ROOT, SHIPPED_CONFIG
from tests.support.processes import loopback_config


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


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXTERNAL = {"docker", "jq", "export"}  # commands of other projects (or the shell) the README uses


def subcommand(args: list[str]) -> str | None:
    """The subcommand in `smarthome`'s arguments: the first word that is no option nor --config's value."""
    words = iter(args)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} leads nowhere"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: no heading for #{anchor} in {linked.name}"


def test_every_readme_command_names_a_file_or_subcommand_that_exists() -> None:
    usage = (Path(smarthome.__file__).parent / "__main__.py").read_text()  # wherever the package is laid out
    subcommands = set(re.findall(r"^smarthome (\w+)", usage, re.M))
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands = [
        part
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        for part in re.split(r"&&|\|", line.split("  #")[0])
        if part.strip()
    ]
    assert commands
    for command in commands:
        words = [w for w in command.split() if not re.match(r"^[A-Z_0-9]+=", w)]  # no VAR=value
        program, args = words[0], words[1:]
        if program.endswith("smarthome"):
            assert subcommand(args) in subcommands, command
        elif program in ("bash", "python3") and args and not args[0].startswith("-"):
            assert (ROOT / args[0]).exists(), command
        elif program.startswith(".venv/bin/"):  # made by the README's own `python3 -m venv .venv`
            assert program.removeprefix(".venv/bin/") in ("pip", "python"), command
        elif program not in EXTERNAL:
            assert (ROOT / program).exists() or program == "python3", command


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


def test_every_long_running_container_is_hardened() -> None:
    """Ours and Mosquitto alike: read-only root, no capabilities, no privilege gain, memory and pids bounded, a
    healthcheck, restarted after a crash (the images set a non-root user: Dockerfile, services/mosquitto/)."""
    services = yaml.load((ROOT / "docker-compose.yml").read_text(), ComposeLoader)["services"]
    running = {name: s for name, s in services.items() if name not in ("keys", "base")}
    assert {"mosquitto", "mqtt-bridge", "light-switch", "web"} <= set(running)
    for name, service in running.items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"] and service["restart"] == "on-failure", name
        assert set(service["deploy"]["resources"]["limits"]) == {"memory", "pids"}, name
        assert "test" in service["healthcheck"] and not service["healthcheck"].get("disable"), name
    for dockerfile in (ROOT / "Dockerfile", ROOT / "services" / "mosquitto" / "Dockerfile"):
        user = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
        assert user and user[-1] not in ("root", "0"), dockerfile
