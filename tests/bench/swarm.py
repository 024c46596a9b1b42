"""Benchmark: the broker stack on a two-node Docker Swarm, against the same stack under compose on one engine.

    .venv/bin/python -m tests.bench.swarm [--toggles N] [--scales 10,25,50]      (as root; images built)

Builds the test swarm with swarm/cluster.sh (and always takes it down), with prep times 0 (a config directory
of its own). Everything is observed from the host, as the host tools do: commands go into the broker's
publisher port, the mirror's view comes out of its subscriber port. Per run:
  deploy   `stack.py deploy` until the mirror shows coffee and toast ready
  latency  the light switched --toggles times, each until the mirror shows every appliance in the new state
           (light -> switch -> broker -> appliances -> broker -> mirror -> broker -> us); p50/p99 for the swarm
           with the appliances on node 2 (across the overlay) and, as the baseline, the compose stack
  scale    `docker service scale smarthome_toaster=N` until the mirror shows N toasters ready, then one light
           toggle (off, then on) until it shows them all ready again; on one node (the manager, node 2 drained)
           and on two (the toasters on node 2)
Writes tests/bench/results/swarm.md and swarm.png. A report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml
import zmq
from smarthome.core.config import load_config
from smarthome.core.envelope import decode
from smarthome.core.identity import Identity
from smarthome.core.messaging import Outbox

from tests.bench.benchlib import RESULTS, ROOT, docker_version, header
from tests.support.peers import with_key

COMMANDS = "tcp://127.0.0.1:5559"  # the broker's publisher port: our light commands go in here
VIEWS = "tcp://127.0.0.1:5560"  # its subscriber port: the mirror's view comes out here
DEADLINE = 180.0
COMPOSE = ["docker", "compose", "-f", "docker-compose.yml", "-f", "docker-compose.broker.yml"]


def sh(*command: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=False)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def zero_prep_config(directory: Path) -> None:
    for name in ("smarthome.yml", "smarthome.broker.yml"):
        config = yaml.safe_load((ROOT / "config" / name).read_text())
        for service in ("coffee-maker", "toaster"):
            config["services"][service]["prep_time"] = 0
        (directory / name).write_text(yaml.safe_dump(config))
        (directory / name).chmod(0o644)
    directory.chmod(0o755)  # compose mounts it into containers that run as a user of their own


class Home:
    """The running stack as the host sees it through the broker: light commands in, the mirror's view out."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.commands = self.context.socket(zmq.XPUB)
        self.views = self.context.socket(zmq.SUB)
        for sock in (self.commands, self.views):  # the host tools' key (keys/, where the stack's secrets come from)
            with_key(sock, ROOT / "config" / "smarthome.broker.yml", server="broker")
        self.commands.connect(COMMANDS)
        self.views.subscribe("mirror")
        self.views.connect(VIEWS)
        self.view: dict[str, str] = {}
        config = load_config(ROOT / "config" / "smarthome.broker.yml")
        self.outbox = Outbox(Identity("bench", config), "light-set", config.topics["light-set"])
        self.listening = False

    def close(self) -> None:
        self.context.destroy(linger=0)

    def wait(self, condition: Callable[[dict[str, str]], bool], what: str) -> float:
        """Read the mirror's views until `condition(view)`; the time it took."""
        started = time.perf_counter()
        while not condition(self.view):
            if time.perf_counter() - started > DEADLINE:
                sys.exit(f"no {what} within {DEADLINE:.0f} s; the mirror shows {self.view}")
            if self.views.poll(100):
                self.view = decode(self.views.recv_multipart()).body["view"]
        return time.perf_counter() - started

    def switch(self, state: str) -> None:
        """Publish a light command, once the light switches' subscription has reached us through the broker."""
        while not self.listening:
            if not self.commands.poll(DEADLINE * 1000):
                sys.exit("no light switch subscribed to commands")
            if self.commands.recv().startswith(b"\x01light-set"):
                self.listening = True
                for frames in self.outbox.answer():  # a heartbeat: the switches know this life [P2, L3]
                    self.commands.send_multipart(frames)
        self.commands.send_multipart(self.outbox.publish({"state": state})[1])

    def toggle(self, state: str, toasters: int) -> float:
        """Switch the light; the seconds until the mirror shows coffee and `toasters` toasters in that state."""
        wanted = "ready" if state == "ON" else "idle"
        started = time.perf_counter()
        self.switch(state)
        self.wait(lambda view: shows(view, wanted, toasters), f"{toasters} toaster(s) {wanted}")
        return time.perf_counter() - started


def shows(view: dict[str, str], state: str, toasters: int) -> bool:
    return sum(label.startswith("toast") for label in view) == toasters and set(view.values()) == {state}


def latencies(home: Home, toggles: int) -> list[float]:
    return [home.toggle(state, 1) for _, state in zip(range(toggles), ["OFF", "ON"] * toggles, strict=False)]


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def compose_baseline(env: dict[str, str], toggles: int) -> list[float]:
    project = ["-p", f"bench-swarm-{uuid.uuid4().hex[:6]}"]
    sh(*COMPOSE, *project, "up", "--detach", "--wait", env=env)
    home = Home()
    try:
        home.wait(lambda view: shows(view, "ready", 1), "ready")
        return latencies(home, toggles)
    finally:
        home.close()
        sh(*COMPOSE, *project, "down", "--timeout", "5", env=env)


def swarm_run(env: dict[str, str], toggles: int, scales: list[int], one_node: bool) -> dict:
    manager = sh("docker", "node", "inspect", "self", "--format", "{{.ID}}").strip()
    if one_node:  # everything on the manager: it is the kitchen too, node 2 takes no tasks
        sh("docker", "node", "update", "--label-add", "room=kitchen", manager)
        sh("docker", "node", "update", "--availability", "drain", "node2")
    started = time.perf_counter()
    sh("python3", "swarm/stack.py", "deploy", env=env)
    home = Home()
    try:
        home.wait(lambda view: shows(view, "ready", 1), "coffee and toast ready")
        result = {"deploy": time.perf_counter() - started, "latency": latencies(home, toggles), "scale": {}}
        for replicas in scales:
            started = time.perf_counter()
            sh("docker", "service", "scale", "--detach", f"smarthome_toaster={replicas}")
            home.wait(lambda view, n=replicas: shows(view, "ready", n), f"{replicas} toasters ready")
            scaled = time.perf_counter() - started
            home.toggle("OFF", replicas)
            result["scale"][replicas] = (scaled, home.toggle("ON", replicas))
            print(f"  {replicas} toasters: scaled in {scaled:.1f} s, toggle {result['scale'][replicas][1]:.2f} s")
        return result
    finally:
        home.close()
        sh("docker", "stack", "rm", "smarthome")
        while sh("docker", "ps", "-q", "--filter", "label=com.docker.stack.namespace=smarthome"):
            time.sleep(0.5)  # ok: polling for the old tasks to go before the next run's deploy
        if one_node:
            sh("docker", "node", "update", "--label-rm", "room", manager)
            sh("docker", "node", "update", "--availability", "active", "node2")


def ms(values: list[float], share: float) -> str:
    return f"{percentile(values, share) * 1000:.1f} ms"


def report(compose: list[float], runs: dict[str, dict]) -> str:
    lines = [
        "| stack | deploy to all ready | light -> mirror p50 | p99 |",
        "|---|---:|---:|---:|",
        f"| compose, one engine (baseline) | | {ms(compose, 0.5)} | {ms(compose, 0.99)} |",
    ]
    lines += [
        f"| swarm, {name} | {run['deploy']:.1f} s | {ms(run['latency'], 0.5)} | {ms(run['latency'], 0.99)} |"
        for name, run in runs.items()
    ]
    lines += ["", "| toasters | nodes | scale to all ready | light toggle to all ready |", "|---:|---|---:|---:|"]
    lines += [
        f"| {replicas} | {name} | {scaled:.1f} s | {toggled:.2f} s |"
        for name, run in runs.items()
        for replicas, (scaled, toggled) in run["scale"].items()
    ]
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, run in runs.items():
        replicas = list(run["scale"])
        axes[0].plot(replicas, [run["scale"][n][0] for n in replicas], marker="o", label=name)
        axes[1].plot(replicas, [run["scale"][n][1] for n in replicas], marker="o", label=name)
    axes[0].set(title="docker service scale to all ready", xlabel="toasters", ylabel="seconds")
    axes[1].set(title="light toggle to all ready", xlabel="toasters", ylabel="seconds")
    for axis in axes:
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(RESULTS / "swarm.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toggles", type=int, default=100, help="light toggles per latency run")
    parser.add_argument("--scales", default="10,25,50", help="toaster replica counts, increasing")
    args = parser.parse_args()
    scales = [int(n) for n in args.scales.split(",")]
    top = header(
        "Docker Swarm: the broker stack on one and two nodes, against compose",
        " ".join(["python -m tests.bench.swarm", *sys.argv[1:]]),
        {"Docker Engine": docker_version()},
    )
    with tempfile.TemporaryDirectory() as config_dir:
        zero_prep_config(Path(config_dir))
        env = {**os.environ, "SMARTHOME_CONFIG_DIR": config_dir}
        sh("docker", "compose", "build", "--quiet")
        print("compose baseline ...")
        compose = compose_baseline(env, args.toggles)
        sh("bash", "swarm/cluster.sh", "up")
        try:
            runs = {}
            for name, one_node in (("one node", True), ("two nodes", False)):
                print(f"swarm, {name} ...")
                runs[name] = swarm_run(env, args.toggles, scales, one_node)
        finally:
            sh("bash", "swarm/cluster.sh", "down")
    table = report(compose, runs)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "swarm.md").write_text(top + "\n" + table)
    plot(runs)


if __name__ == "__main__":
    main()
