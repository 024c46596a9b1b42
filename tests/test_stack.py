"""The Docker tier: the real compose stacks on a real engine, checked through their logs and exit codes.

The stacks publish their fixed ports on 127.0.0.1 for the host tools, so stop your own stack first.

Needs a Docker engine with Compose v2 (`bash .ci/provision-docker` sets one up). Outside CI a missing
engine skips this module; with CI=true it fails, so CI can never pass without running it.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import docker
import pytest
from support import BROKER_CONFIG, ROOT, smarthome, wait_until

pytestmark = pytest.mark.docker

SERVICES = ["light-switch", "coffee-maker", "toaster", "smart-mirror"]
ALL_READY = "MIRROR coffee=ready toast=ready"
COMPOSE_TIMEOUT = 300  # seconds for one compose command (a first build installs dependencies)


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        message = f"no Docker engine: {exc} (run `bash .ci/provision-docker`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return client


class Stack:
    """One compose project of ours, under its own name, driven by the `docker compose` CLI."""

    def __init__(self, engine: docker.DockerClient, *files: str) -> None:
        self.engine = engine
        self.project = f"smarthome-test-{uuid.uuid4().hex[:8]}"
        self.files = [arg for f in files or ("docker-compose.yml",) for arg in ("-f", str(ROOT / f))]

    def compose(self, *args: str) -> str:
        command = ["docker", "compose", *self.files, "-p", self.project, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT, cwd=ROOT)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def containers(self, service: str | None = None) -> list:
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self.engine.containers.list(all=True, filters={"label": labels})

    def log_lines(self, service: str) -> list[str]:
        return [line for c in self.containers(service) for line in c.logs().decode().splitlines()]

    def count(self, service: str, text: str) -> int:
        return sum(text in line for line in self.log_lines(service))

    def last(self, service: str, prefix: str) -> str:
        messages = [line.split(maxsplit=2)[-1] for line in self.log_lines(service)]
        return next((m for m in reversed(messages) if m.startswith(prefix)), "")

    def wait_for(self, service: str, text: str, times: int = 1) -> None:
        wait_until(lambda: self.count(service, text) >= times, f"{service} to log {text!r} x{times}", 60, self.all_logs)

    def all_logs(self) -> str:
        return "\n".join(
            f"{c.labels['com.docker.compose.service']} | {line}"
            for c in self.containers()
            for line in c.logs().decode().splitlines()
        )

    def stop_and_check_exit_codes(self) -> None:
        """`docker compose stop` (SIGTERM), then every container must have exited 0 by itself."""
        self.compose("stop")
        for container in self.containers():
            container.reload()
            state = container.attrs["State"]
            name = container.labels["com.docker.compose.service"]
            assert state["ExitCode"] == 0, f"{name} exited {state['ExitCode']} (137 = SIGKILLed)\n{self.all_logs()}"
            assert not state["OOMKilled"]
            assert self.log_lines(name)[-1].endswith("stopped")


@pytest.fixture(scope="session")
def built(engine: docker.DockerClient) -> None:
    Stack(engine).compose("build")


@pytest.fixture
def stack(engine: docker.DockerClient, built: None, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A fresh project; `@pytest.mark.parametrize("stack", [files], indirect=True)` picks other compose files."""
    stack = Stack(engine, *getattr(request, "param", ()))
    try:
        yield stack
    finally:
        print(stack.all_logs())  # pytest shows it when the test failed
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")


def wait_for_the_morning_routine(stack: Stack) -> None:
    stack.wait_for("light-switch", "LIGHT SWITCH published 'light is ON' (seq 1)")
    stack.wait_for("coffee-maker", "COFFEE MAKER received 'light is ON' from light.")
    stack.wait_for("toaster", "TOASTER received 'light is ON' from light.")
    stack.wait_for("smart-mirror", 'Topic: COFFEE MAKER => {"status": true}')
    stack.wait_for("smart-mirror", 'Topic: TOASTER => {"status": true}')
    stack.wait_for("smart-mirror", ALL_READY)


def test_the_stack_runs_the_routine_survives_restarts_and_stops_cleanly(stack: Stack) -> None:
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60")
    for service in SERVICES:
        [container] = stack.containers(service)
        assert container.attrs["State"]["Health"]["Status"] == "healthy"
    wait_for_the_morning_routine(stack)

    received = stack.count("coffee-maker", "received 'light is ON'")
    stack.compose("restart", "light-switch")
    stack.wait_for("coffee-maker", "received 'light is ON' from light.", times=received + 1)

    toast_ready = 'Topic: TOASTER => {"status": true}'
    ready_before = stack.count("smart-mirror", toast_ready)
    stack.compose("restart", "toaster")
    stack.wait_for("smart-mirror", toast_ready, times=ready_before + 1)
    wait_until(lambda: stack.last("smart-mirror", "MIRROR coffee=") == ALL_READY, "all ready", 60, stack.all_logs)

    stack.stop_and_check_exit_codes()


@pytest.mark.parametrize(
    "order",
    [
        ["smart-mirror", "toaster", "coffee-maker", "light-switch"],
        ["coffee-maker", "light-switch", "smart-mirror", "toaster"],
    ],
    ids=["subscribers first", "mixed"],
)
def test_any_start_order_converges(stack: Stack, order: list[str]) -> None:
    for service in order:
        stack.compose("up", "--detach", "--wait", "--wait-timeout", "60", "--no-deps", service)
    wait_for_the_morning_routine(stack)
    stack.stop_and_check_exit_codes()


BROKER_FILES = ("docker-compose.yml", "docker-compose.broker.yml")


def mirror_view(stack: Stack) -> dict[str, str]:
    """The mirror's latest summary as {label: state}, e.g. {"coffee": "ready", "toast@1a2b3c4d5e6f": "idle"}."""
    line = stack.last("smart-mirror", "MIRROR coffee")
    return dict(part.split("=") for part in line.split()[1:])


def mirror_shows(stack: Stack, state: str, toasters: int) -> bool:
    view = mirror_view(stack)
    return sum(label.startswith("toast@") for label in view) == toasters and set(view.values()) == {state}


@pytest.mark.parametrize("stack", [BROKER_FILES], indirect=True)
def test_broker_wiring_is_n_to_n_scales_serves_late_joiners_and_survives_a_broker_restart(stack: Stack) -> None:
    early = ["broker", "light-switch", "kitchen-light", "coffee-maker", "toaster", "smart-mirror"]
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60", "--scale", "toaster=3", *early)
    toasters = stack.containers("toaster")
    assert len(toasters) == 3
    for appliance in [*toasters, *stack.containers("coffee-maker")]:  # every subscriber hears both switches
        wait_until(
            lambda c=appliance: c.logs().decode().count("received 'light is ON' from light.") >= 2,
            f"{appliance.name} to hear both light switches",
            60,
            stack.all_logs,
        )
    wait_until(
        lambda: mirror_shows(stack, "ready", toasters=3), "the mirror to show 3 toasters ready", 60, stack.all_logs
    )

    stack.compose("up", "--detach", "--wait", "--no-deps", "radio")  # a late joiner
    stack.wait_for("radio", "RADIO heard 'light is ON' from light-switch@")
    stack.wait_for("radio", "RADIO heard 'light is ON' from kitchen-light@")
    stack.wait_for("radio", "RADIO playing")

    # The host tools, through the broker's ports on 127.0.0.1.
    seen = smarthome(BROKER_CONFIG, "sub", "toast", "--count", "3", "--timeout", "30")
    assert seen.returncode == 0, seen.stderr
    assert len({line.split()[1] for line in seen.stdout.splitlines()}) == 3  # three toaster senders
    assert smarthome(BROKER_CONFIG, "light", "off").returncode == 0
    wait_until(lambda: mirror_shows(stack, "idle", toasters=3), "the mirror to show all idle", 60, stack.all_logs)
    stack.wait_for("radio", "RADIO silent")

    stack.compose("restart", "broker")
    stack.wait_for("broker", "BROKER started", times=2)
    switched = smarthome(BROKER_CONFIG, "light", "on", "--timeout", "30")  # waits for the switches to reconnect
    assert switched.returncode == 0, switched.stderr
    wait_until(lambda: mirror_shows(stack, "ready", toasters=3), "the mirror to converge again", 60, stack.all_logs)

    stack.stop_and_check_exit_codes()
