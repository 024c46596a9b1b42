"""The compose stack under a project name of its own, driven by the `docker compose` CLI, and its logs."""

from __future__ import annotations

import subprocess
import uuid
from typing import TYPE_CHECKING, Any

from .base import ROOT
from .processes import LogReader

if TYPE_CHECKING:
    import docker

BROKER_FILES = ("docker-compose.yml", "docker-compose.broker.yml")  # the broker wiring's compose files
WIRINGS = {"direct": ("docker-compose.yml",), "broker": BROKER_FILES}  # compose files of each wiring
COMPOSE_TIMEOUT = 300  # seconds for one compose command (a first build installs dependencies)
HEALTHCHECK_INTERVAL = "SMARTHOME_HEALTHCHECK_INTERVAL"  # compose's healthcheck interval (conftest.py sets 1s)
LAST_WORDS = {"mosquitto": "terminating"}  # a stopped service's last line: ours end with "stopped"


class Stack:
    """One compose project of ours, under its own name, driven by the `docker compose` CLI."""

    def __init__(self, engine: docker.DockerClient, *files: str, kind: str = "test") -> None:
        self.engine = engine
        self.project = f"smarthome-{kind}-{uuid.uuid4().hex[:8]}"
        self.files = [arg for f in files or ("docker-compose.yml",) for arg in ("-f", str(ROOT / f))]
        self.profiles: list[str] = []  # compose profiles every command of this stack uses, e.g. ["mqtt"]

    def compose(self, *args: str) -> str:
        profiles = [arg for profile in self.profiles for arg in ("--profile", profile)]
        command = ["docker", "compose", *self.files, *profiles, "-p", self.project, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT, cwd=ROOT)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def containers(self, service: str | None = None) -> list:
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self.engine.containers.list(all=True, filters={"label": labels})

    def recreate(self, service: str, *options: str) -> None:
        """A new container for `service` (a new hostname, so a new instance), its dependencies left alone."""
        self.compose("up", "--detach", *options, "--force-recreate", "--no-deps", service)

    def scale(self, service: str, instances: int, *options: str) -> None:
        """Start or stop containers of `service` until `instances` run; the others are left as they are."""
        self.compose("up", "--detach", *options, "--no-recreate", "--scale", f"{service}={instances}", service)

    def network(self, name: str) -> Any:
        """One of the project's compose networks."""
        return self.engine.networks.get(f"{self.project}_{name}")

    def logs(self, service: str) -> ServiceLogs:
        return ServiceLogs(self, service)

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
            if name != "keys":  # the one-shot that made the keys ended long before
                assert self.logs(name).log_lines()[-1].endswith(LAST_WORDS.get(name, "stopped"))


class ServiceLogs(LogReader):
    """The log lines of every container of one compose service."""

    deadline = 60.0  # containers start slower than local processes

    def __init__(self, stack: Stack, service: str) -> None:
        self.stack = stack
        self.name = service

    def log_lines(self) -> list[str]:
        return [line for c in self.stack.containers(self.name) for line in c.logs().decode().splitlines()]

    def output(self) -> str:
        return self.stack.all_logs()


def mirror_view(stack: Stack) -> dict[str, str]:
    """The mirror's latest summary as {label: state}, e.g. {"coffee": "ready", "toast@1a2b3c4d5e6f": "idle"}."""
    line = stack.logs("smart-mirror").last("MIRROR coffee")
    return dict(part.split("=") for part in line.split()[1:])


def mirror_shows(stack: Stack, state: str, toasters: int) -> bool:
    """Whether the mirror shows everything in `state`, with `toasters` toaster instances (0: one, unlabelled)."""
    view = mirror_view(stack)
    return sum(label.startswith("toast@") for label in view) == toasters and set(view.values()) == {state}
