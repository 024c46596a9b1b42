"""The Docker tier on a real two-node Docker Swarm: the stack deployed, healed, updated, scaled and removed.

swarm/cluster.sh builds the swarm on this machine (this engine as the manager, a second dockerd in the network
namespace "node2" as the worker labelled room=kitchen) once for the module, and always takes it down, leaving
this engine as it found it. Everything is driven through the docker CLI, as a user would: `docker service
logs`, `docker service scale`, ... The tests run in order, on one stack: each starts from the state the one
before left (the broker wiring, light on, everything ready), which keeps the module at a few minutes.

Needs root (network namespaces), a Docker engine and nothing else in a swarm; with CI=true a missing engine
fails the module (support.unavailable), so CI can never pass without it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import docker
import pytest

from tests.support.base import ALL_READY, BROKER_CONFIG, ROOT, unavailable, wait_until
from tests.support.processes import smarthome

pytestmark = pytest.mark.docker

STACK = "smarthome"  # the README's name: this module's swarm is its own, nothing else can hold the name
CLUSTER = ROOT / "swarm" / "cluster.sh"
NODE2_HOST = "unix:///var/run/docker-node2.sock"
HOST_LINK = "veth-s2h"  # node2's only link to the manager
KITCHEN = ["coffee-maker", "toaster"]  # placed on the node labelled room=kitchen
HUB = ["broker", "light-switch", "kitchen-light", "smart-mirror", "web"]  # placed on the manager
DEADLINE = 60.0  # seconds a swarm may take to converge (it reschedules, restarts with delays, ...)
HEAL = 120.0  # after a partition: the overlay may take a minute more to carry a rescheduled task's traffic


def run(*command: str, timeout: float = 120) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def log_message(line: str) -> tuple[str, str]:
    """(the service's own timestamp, its message) of a `docker service logs` line: 'task@node | TIME LEVEL MSG'."""
    parts = line.partition("| ")[2].split(maxsplit=2)
    return (parts[0], parts[2]) if len(parts) == 3 else ("", line)


class Swarm:
    """The stack on the test swarm, seen through the docker CLI."""

    def __init__(self, stack: str = STACK) -> None:
        self.stack = stack
        self.manager = run("docker", "node", "inspect", "self", "--format", "{{.Description.Hostname}}").strip()

    def service(self, name: str) -> str:
        return f"{self.stack}_{name}"

    def deploy(self, *options: str) -> None:
        run("python3", "swarm/stack.py", "deploy", "--name", self.stack, *options)

    def services(self) -> dict[str, str]:
        """{service: replicas}, e.g. {"toaster": "1/1"}."""
        command = ["docker", "stack", "services", self.stack, "--format", "{{.Name}} {{.Replicas}}"]
        listed = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout  # none: not an error
        return {name.removeprefix(f"{self.stack}_"): replicas for name, replicas in map(str.split, listed.splitlines())}

    def all_running(self) -> bool:
        services = self.services()
        return bool(services) and all(a == b for a, b in (r.split("/") for r in services.values()))

    def tasks(self, name: str) -> list[dict[str, str]]:
        """Every task of the service, newest first: Name, Node, DesiredState, CurrentState, Error, ..."""
        out = run("docker", "service", "ps", self.service(name), "--no-trunc", "--format", "{{json .}}")
        return [json.loads(line) for line in out.splitlines()]

    def running_on(self, name: str) -> list[str]:
        """Where each task that swarm wants running is: its node, or "not running" (pending, starting, ...).

        Tasks swarm has given up on (on a node that is down, replaced elsewhere) are left out.
        """
        return [
            t["Node"] if t["CurrentState"].startswith("Running") else "not running"
            for t in self.tasks(name)
            if t["DesiredState"] == "Running"
        ]

    def logs(self, name: str) -> list[str]:
        """`docker service logs` of every task of the service (old ones too), in the order they were written.

        The services log to stderr. While a node is down its tasks' logs are missing (a warning, exit code 1).
        """
        command = ["docker", "service", "logs", "--no-task-ids", self.service(name)]
        out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30).stdout
        return [message for _, message in sorted(map(log_message, out.splitlines()), key=lambda m: m[0])]

    def count(self, name: str, text: str) -> int:
        return sum(text in message for message in self.logs(name))

    def wait_for(self, name: str, text: str, times: int = 1) -> None:
        wait_until(lambda: self.count(name, text) >= times, f"{name} to log {text!r} x{times}", DEADLINE, self.all_logs)

    def mirror_view(self) -> dict[str, str]:
        """The mirror's latest summary as {label: state}, e.g. {"coffee": "ready", "toast@...-2": "idle"}."""
        line = next((m for m in reversed(self.logs("smart-mirror")) if m.startswith("MIRROR coffee")), "MIRROR")
        return dict(part.split("=") for part in line.split()[1:])

    def mirror_shows(self, state: str, toasters: int = 1) -> bool:
        view = self.mirror_view()
        labels = [label for label in view if label.startswith("toast")]
        return len(labels) == toasters and set(view.values()) == {state}

    def wait_for_mirror(self, state: str, toasters: int = 1, timeout: float = DEADLINE) -> None:
        wait_until(
            lambda: self.mirror_shows(state, toasters),
            f"the mirror to show coffee and {toasters} toaster(s) {state}",
            timeout,
            lambda: f"mirror view: {self.mirror_view()}\n{self.all_logs()}",
        )

    def all_logs(self) -> str:
        names = self.services()
        tasks = "\n".join(
            f"{t['Name']} {t['Node']} {t['CurrentState']} {t['Error']}" for n in names for t in self.tasks(n)
        )
        logs = "\n".join(f"{n} | {m}" for n in names for m in self.logs(n))
        return f"--- tasks\n{tasks}\n--- logs\n{logs}"

    def remove(self) -> float:
        """`docker stack rm`; returns the seconds until the last task's container on either node is gone."""
        started = time.monotonic()
        run("docker", "stack", "rm", self.stack)
        wait_until(lambda: not self.containers(), "every task's container to go", DEADLINE, self.describe_containers)
        return time.monotonic() - started

    def containers(self) -> list[str]:
        return [
            line
            for host in (None, NODE2_HOST)
            for line in docker_cli(host, "ps", "-a", "--filter", f"label=com.docker.stack.namespace={self.stack}")
        ]

    def describe_containers(self) -> str:
        return "\n".join(self.containers())


def docker_cli(host: str | None, *args: str) -> list[str]:
    """Output lines of a docker command on the main engine (None) or node2, without the header."""
    return run("docker", *(["-H", host] if host else []), *args, "--format", "{{.Names}} {{.Status}}").splitlines()


def exit_codes_since(since: float, stack: str) -> dict[str, str]:
    """{container: exit code} of every container of the stack that ended since `since`, on both nodes."""
    codes = {}
    for host in (None, NODE2_HOST):
        out = run(
            "docker", *(["-H", host] if host else []), "events",
            "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
            "--filter", "event=die", "--filter", f"label=com.docker.stack.namespace={stack}",
            "--format", "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
        )  # fmt: skip
        codes.update(line.split() for line in out.splitlines())
    return codes


def node_status(hostname: str) -> str:
    return run("docker", "node", "ls", "--filter", f"name={hostname}", "--format", "{{.Status}}").strip()


# --- the cluster, once for the module ---


@pytest.fixture(scope="module")
def swarm(engine: docker.DockerClient, built: None) -> Iterator[Swarm]:
    if os.geteuid() != 0:
        unavailable("the two-node swarm needs root (network namespaces, a second dockerd)")
    run("bash", str(CLUSTER), "up")
    try:
        swarm = Swarm()
        swarm.deploy()
        wait_until(swarm.all_running, "every service to run", DEADLINE, swarm.all_logs)
        yield swarm
    finally:
        run("bash", str(CLUSTER), "down")


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, swarm: Swarm) -> Iterator[None]:
    """Every task and every service's logs after a failed test (pytest shows a failed test's teardown output)."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(swarm.all_logs())


def test_the_stack_deploys_across_two_nodes_by_label_and_runs_the_routine(swarm: Swarm) -> None:
    for name in KITCHEN:
        assert swarm.running_on(name) == ["node2"], f"{name} runs on {swarm.running_on(name)}, not the kitchen"
    for name in HUB:
        assert swarm.running_on(name) == [swarm.manager], f"{name} runs on {swarm.running_on(name)}"

    # The tutorial's lines, through `docker service logs`, from tasks on both nodes across the overlay.
    swarm.wait_for("light-switch", "BATHROOM LIGHT published 'light is ON' (seq 1)")
    swarm.wait_for("coffee-maker", "COFFEE MAKER received 'light is ON' from light.")
    swarm.wait_for("toaster", "TOASTER received 'light is ON' from light.")
    swarm.wait_for("smart-mirror", 'Topic: COFFEE MAKER => {"status": true}')
    swarm.wait_for("smart-mirror", 'Topic: TOASTER => {"status": true}')
    swarm.wait_for_mirror("ready")
    assert swarm.mirror_view() == {"coffee": "ready", "toast": "ready"}, "one sender each, named by service and slot"

    # The host tools reach the broker's host-mode ports on the manager.
    seen = smarthome(BROKER_CONFIG, "sub", "mirror", "--count", "1", "--timeout", "10")
    assert seen.returncode == 0, seen.stderr
    assert json.loads(seen.stdout.split(maxsplit=3)[3])["view"] == {"coffee": "ready", "toast": "ready"}


def test_swarm_replaces_a_task_whose_healthcheck_fails(swarm: Swarm, engine: docker.DockerClient) -> None:
    [container] = engine.containers.list(
        filters={"label": f"com.docker.swarm.service.name={swarm.service('smart-mirror')}"}
    )
    for process in container.top()["Processes"]:  # freeze the loop: it stops touching its health file
        os.kill(int(process[1]), signal.SIGSTOP)
    ready_before = swarm.count("smart-mirror", ALL_READY)

    def replaced() -> bool:
        failed = [t for t in swarm.tasks("smart-mirror") if "unhealthy container" in t["Error"]]
        return bool(failed) and swarm.running_on("smart-mirror") == [swarm.manager]

    wait_until(replaced, "swarm to replace the unhealthy mirror", DEADLINE, swarm.all_logs)
    # The new mirror learns both appliances' state from the broker's last values at once.
    swarm.wait_for("smart-mirror", ALL_READY, times=ready_before + 1)


def test_a_rolling_update_of_the_light_switch_reaches_every_appliance(swarm: Swarm) -> None:
    assert smarthome(BROKER_CONFIG, "light", "off").returncode == 0  # both switches
    swarm.wait_for_mirror("idle")
    restored = swarm.count("light-switch", "BATHROOM LIGHT restored 'light is OFF'")
    switch_gaps = "messages from light-switch@"  # how a subscriber's gap count names the sender
    gaps_before = {name: swarm.count(name, switch_gaps) for name in ("coffee-maker", "toaster")}

    # The replacement starts (with the light on, by default) before the old switch stops (start-first)...
    run("docker", "service", "update", "--force", "--detach=false", swarm.service("light-switch"))
    state = run("docker", "service", "inspect", swarm.service("light-switch"), "--format", "{{.UpdateStatus.State}}")
    assert state.strip() == "completed"
    # ... and starts from the state the broker keeps of the old one (not from a command: rules P4, K3), so every
    # appliance stays with what the user chose.
    swarm.wait_for("light-switch", "BATHROOM LIGHT restored 'light is OFF'", times=restored + 1)
    swarm.wait_for_mirror("idle")
    assert smarthome(BROKER_CONFIG, "light", "on").returncode == 0  # the new switch drives every appliance
    swarm.wait_for_mirror("ready")
    # Nothing the switch sent was lost across the update: no appliance counted a gap in its messages.
    assert {name: swarm.count(name, switch_gaps) for name in gaps_before} == gaps_before, swarm.all_logs()


def test_a_node_failure_is_seen_rescheduled_where_placement_allows_and_healed(swarm: Swarm) -> None:
    run("ip", "link", "set", HOST_LINK, "down")  # node2 cut off: its daemon and tasks keep running, unreachable
    try:
        wait_until(lambda: node_status("node2") == "Down", "swarm to mark node2 down", DEADLINE, swarm.all_logs)
        # The radio may play anywhere: it runs on the manager now. The appliances may only run in the kitchen.
        wait_until(lambda: swarm.running_on("radio") == [swarm.manager], "the radio on the manager", DEADLINE)
        assert smarthome(BROKER_CONFIG, "light", "off").returncode == 0  # while the kitchen cannot hear it
    finally:
        run("ip", "link", "set", HOST_LINK, "up")
    wait_until(lambda: node_status("node2") == "Ready", "node2 back", DEADLINE, swarm.all_logs)
    for name in KITCHEN:
        wait_until(lambda n=name: swarm.running_on(n) == ["node2"], f"{name} back in the kitchen", DEADLINE)
    swarm.wait_for_mirror("idle", timeout=HEAL)  # the kitchen learned what it missed: the light went off
    # Healed: the kitchen's tasks now (swarm may have replaced those that rode out the partition) answer too.
    assert smarthome(BROKER_CONFIG, "light", "on").returncode == 0
    swarm.wait_for_mirror("ready", timeout=HEAL)


def scale_toaster(swarm: Swarm, replicas: int) -> None:
    """`docker service scale`, then wait until exactly `replicas` toasters run, all in the kitchen."""
    run("docker", "service", "scale", "--detach", f"{swarm.service('toaster')}={replicas}")
    wanted = ["node2"] * replicas
    wait_until(lambda: swarm.running_on("toaster") == wanted, f"{replicas} toasters in the kitchen", DEADLINE)


def test_scaling_the_toaster_up_shows_every_toaster(swarm: Swarm) -> None:
    assert smarthome(BROKER_CONFIG, "light", "on").returncode == 0
    swarm.wait_for_mirror("ready")
    scale_toaster(swarm, 4)
    swarm.wait_for_mirror("ready", toasters=4)


def test_scaling_the_toaster_down_leaves_no_ghosts(swarm: Swarm) -> None:
    scale_toaster(swarm, 1)
    swarm.wait_for_mirror("ready", toasters=1, timeout=30)  # a sender whose heartbeats stop: gone in seconds


def test_stack_rm_ends_every_task_by_its_own_sigterm(swarm: Swarm) -> None:
    tasks = sum(int(replicas.split("/")[0]) for replicas in swarm.services().values())
    logs = swarm.all_logs()  # gone with the stack
    since = time.time()
    took = swarm.remove()
    codes = exit_codes_since(since, swarm.stack)
    print(f"docker stack rm: every task gone after {took:.1f} s (grace period 5 s)")
    assert len(codes) >= tasks, codes
    # 0: each task stopped by itself on SIGTERM, within the grace period (a SIGKILL after it would be 137).
    killed = {name: code for name, code in codes.items() if code != "0"}
    assert not killed, f"not stopped by their own SIGTERM: {killed}\n{logs}"


def test_the_direct_wiring_runs_as_a_stack_too(swarm: Swarm) -> None:
    direct = Swarm("smarthome-direct")
    direct.deploy("--direct")
    try:
        wait_until(direct.all_running, "every service to run", DEADLINE, direct.all_logs)
        assert direct.running_on("toaster") == ["node2"]
        direct.wait_for("light-switch", "LIGHT SWITCH published 'light is ON' (seq 1)")
        direct.wait_for_mirror("ready")
    finally:
        direct.remove()
