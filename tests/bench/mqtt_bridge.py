"""Benchmark: the light switched from MQTT, to the mirror's view, beside the same switch from ZeroMQ, same run.

    .venv/bin/python -m tests.bench.mqtt_bridge [--toggles N] [--rounds R]

The stack runs under compose with `--profile mqtt` (direct wiring, prep_time 0, no dashboard, the bridge's rate
limit lifted so that a toggle's wait is the path's and not the limit's). A client on the host, signed in to
Mosquitto at 127.0.0.1:1883 as home-assistant, switches the light and waits for the mirror's view, retained by
the bridge, to show every appliance in the new state; then it switches again. Two paths, interleaved:
  mqtt     the command from an MQTT client (paho-mqtt, as Home Assistant), through Mosquitto and the bridge
  zeromq   the same command as `smarthome light` sends it: a light-set from the tools' key, straight to the
           light switch's commands port 127.0.0.1:5555 (the baseline)
Both end the same way (mirror -> bridge -> Mosquitto -> client), so the difference is the way in. Clients stay
connected: a process per command would measure Python's start. CPU: each container's cgroup count (Docker's
stats) over the toggles; memory: the resident size of each service's process, the light switch's the baseline.
Needs Docker; writes tests/bench/results/mqtt_bridge.md. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from importlib import metadata
from pathlib import Path

import docker
import msgspec
import paho.mqtt.client as paho
import yaml
from smarthome.core.config import Publish, load_config
from smarthome.core.envelope import LightState
from smarthome.core.identity import Identity
from smarthome.core.runtime import Loop
from smarthome.mqtt.client import nodelay
from smarthome.mqtt.home import PASSWORD_SUFFIX

from tests.bench.benchlib import ROOT, docker_version, header, load, median, percentile, table, write

SERVICES = ["light-switch", "coffee-maker", "toaster", "smart-mirror", "mosquitto", "mqtt-bridge"]
PATHS = ["mqtt", "zeromq"]
VIEW = "smarthome/smart-mirror/mirror"
WAIT = 10.0  # seconds a toggle may take before the run gives up


def write_config(directory: Path) -> None:
    config = yaml.safe_load((ROOT / "config" / "smarthome.yml").read_text())
    config["services"].pop("web")
    for appliance in ("coffee-maker", "toaster"):
        config["services"][appliance]["prep_time"] = 0
    config["services"]["mqtt-bridge"] |= {"command_rate": 100_000, "command_burst": 100_000}
    (directory / "smarthome.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(ROOT / "config" / "mosquitto.conf", directory / "mosquitto.conf")
    directory.chmod(0o755)  # the services run as a non-root user


class Toggler:
    """Switches the light one way or the other and times each switch to the mirror's view on MQTT."""

    def __init__(self, config_path: Path) -> None:
        self.done = threading.Event()
        self.wanted: str | None = None  # the view that ends the current toggle
        self.started = 0.0
        self.latencies: list[float] = []
        self.mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
        self.mqtt.username_pw_set(
            "home-assistant", (ROOT / "keys" / f"home-assistant{PASSWORD_SUFFIX}").read_text().strip()
        )
        self.mqtt.on_message, self.mqtt.on_socket_open = self.on_view, nodelay  # as the bridge's client
        self.mqtt.connect("127.0.0.1", 1883)
        self.mqtt.subscribe(VIEW, qos=1)
        self.mqtt.loop_start()
        config = load_config(config_path)
        self.zmq = Loop(Identity("smarthome-cli", config, label="bench"))  # the tools' key, as `smarthome light`
        self.switch = self.zmq.publisher(Publish("light-set", connect="tcp://127.0.0.1:5555"))

    def on_view(self, client: paho.Client, _: object, message: paho.MQTTMessage) -> None:
        view = set(msgspec.json.decode(message.payload)["view"].values())
        if self.wanted and view == {self.wanted}:
            self.latencies.append(time.perf_counter() - self.started)
            self.wanted = None
            self.done.set()

    def toggle(self, path: str, state: str) -> None:
        self.done.clear()
        self.wanted = "ready" if state == "ON" else "idle"
        self.started = time.perf_counter()
        if path == "mqtt":
            self.mqtt.publish("smarthome/light-set", state, qos=0)
        else:
            self.zmq.call_soon_threadsafe(lambda: self.switch.publish(LightState(state)))
        if not self.done.wait(WAIT):
            sys.exit(f"{path}: the mirror did not show {self.wanted} within {WAIT:g}s")

    def run(self, path: str, toggles: int) -> list[float]:
        while not self.switch.listened:  # the light switch subscribed to our commands [P3]
            time.sleep(0.05)  # ok: the pause between polls of a deadline-free warm-up
        self.latencies = []
        for i in range(toggles):
            self.toggle(path, "OFF" if i % 2 == 0 else "ON")
        return self.latencies


def cpu_seconds(container) -> float:
    return container.stats(stream=False, one_shot=True)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9


def rss_mib(container) -> float:
    """The resident size of the container's own process (not tini's)."""
    top = container.top()
    pid, cmd = top["Titles"].index("PID"), top["Titles"].index("CMD")
    [target] = [int(p[pid]) for p in top["Processes"] if not p[cmd].startswith("/sbin/docker-init")]
    status = Path(f"/proc/{target}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def measure(toggler: Toggler, containers: dict, cell: dict, path: str, toggles: int, round_: int) -> None:
    before = {s: cpu_seconds(c) for s, c in containers.items()}
    cell["loads"].append(load())
    got = toggler.run(path, toggles)
    for s, c in containers.items():
        cell["cpu"][s] += cpu_seconds(c) - before[s]
    cell["latencies"] += got
    cell["toggles"] += len(got)
    ms = sorted(got)
    print(
        f"round {round_ + 1} {path:6} p50 {ms[len(ms) // 2] * 1e3:.2f} ms p99 {percentile(ms, 99) * 1e3:.2f} ms",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toggles", type=int, default=500, help="toggles per path and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; toggles are pooled per path")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so the stack is taken down too
    client = docker.from_env()
    top = header(
        "Home Assistant's way in: the light from MQTT to the mirror's view, beside `smarthome light`'s",
        " ".join(["python -m tests.bench.mqtt_bridge", *sys.argv[1:]]),
        {"Docker Engine": docker_version(), "paho-mqtt": metadata.version("paho-mqtt")},
    )
    project = f"smarthome-bench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as config_dir:
        write_config(Path(config_dir))
        os.environ["SMARTHOME_KEYS"] = str(ROOT / "keys")  # the stack's keys, for the tools' key here
        env = {**os.environ, "SMARTHOME_CONFIG_DIR": config_dir}
        compose = ["docker", "compose", "-p", project, "--profile", "mqtt"]
        try:
            subprocess.run(
                [*compose, "up", "--build", "--detach", "--wait", *SERVICES],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                timeout=600,
            )
            containers = {
                s: client.containers.list(
                    filters={"label": [f"com.docker.compose.project={project}", f"com.docker.compose.service={s}"]}
                )[0]
                for s in SERVICES
            }
            toggler = Toggler(Path(config_dir) / "smarthome.yml")
            pooled = {
                path: {"latencies": [], "cpu": dict.fromkeys(SERVICES, 0.0), "toggles": 0, "loads": []}
                for path in PATHS
            }

            def drive() -> None:  # on a thread: the ZeroMQ loop has the main thread (signals)
                try:
                    toggler.run("mqtt", 20)  # warm-up, not counted
                    for round_ in range(options.rounds):
                        for path in PATHS:
                            measure(toggler, containers, pooled[path], path, options.toggles, round_)
                finally:
                    toggler.zmq.call_soon_threadsafe(toggler.zmq.stop)

            threading.Thread(target=drive, daemon=True).start()
            toggler.zmq.run()
            memory = {s: rss_mib(c) for s, c in containers.items() if s != "mosquitto"}
            memory["mosquitto"] = rss_mib(containers["mosquitto"])
        finally:
            subprocess.run([*compose, "down", "--timeout", "5"], cwd=ROOT, env=env, capture_output=True, check=False)

    base = pooled["zeromq"]
    rows = []
    for path in PATHS:
        cell = pooled[path]
        ms = [x * 1e3 for x in cell["latencies"]]
        p50, p99 = median(ms), percentile(ms, 99)
        whole = sum(cell["cpu"].values()) * 1e3 / cell["toggles"]
        ratio = whole / (sum(base["cpu"].values()) * 1e3 / base["toggles"])
        rows.append(
            [
                path,
                str(cell["toggles"]),
                f"{p50:.2f}",
                f"{p99:.2f}",
                f"{p50 / median([x * 1e3 for x in base['latencies']]):.2f}x",
                f"{whole:.2f}",
                f"{ratio:.2f}x",
                f"{cell['cpu']['mqtt-bridge'] * 1e3 / cell['toggles']:.2f}",
                f"{cell['cpu']['mosquitto'] * 1e3 / cell['toggles']:.2f}",
                f"{median(cell['loads']):.2f}",
            ]
        )
    latency = table(
        [
            "way in",
            "toggles",
            "p50 ms",
            "p99 ms",
            "p50 vs zeromq",
            "CPU ms/toggle, all",
            "CPU vs zeromq",
            "bridge",
            "mosquitto",
            "load",
        ],
        rows,
        right=set(range(1, 10)),
    )
    # Per toggle the bridge carries 4 states out (light, coffee, toast, mirror), and on the mqtt path 1 command in.
    mqtt = pooled["mqtt"]
    per_message = mqtt["cpu"]["mqtt-bridge"] * 1e6 / mqtt["toggles"] / 5
    switch_rss = memory["light-switch"]
    mem_rows = [[s, f"{mib:.1f}", f"{mib / switch_rss:.2f}x"] for s, mib in memory.items()]
    text = (
        f"{top}\n{latency}\n"
        f"The bridge's CPU per message it carries on the mqtt path (4 states out, 1 command in, per toggle): "
        f"{per_message:.0f} µs.\n\n"
        f"Resident memory after the run (MiB; the baseline is the light switch, a service of the same runtime):\n\n"
        f"{table(['service', 'RSS MiB', 'vs light switch'], mem_rows, right={1, 2})}"
    )
    write("mqtt_bridge", text)


if __name__ == "__main__":
    main()
