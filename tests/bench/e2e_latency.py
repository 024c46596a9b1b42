"""Benchmark: end-to-end latency of the morning routine across containers, ours vs raw pyzmq, same run.

    .venv/bin/python -m tests.bench.e2e_latency [--toggles N] [--rounds R]

Light switch -> coffee maker and toaster -> mirror: two hops, one container per service, in both wirings.
  ours    the real services (`docker compose up` of the shipped compose files, prep_time 0, the light
          toggling every PERIOD s); a probe container on the stack's network subscribes to the light and to
          the mirror's published view. Latency of a toggle: the `ts` of the first mirror view showing every
          appliance in the toggle's state, minus the `ts` of the light's message.
  ours, health every 1 s  the same with Docker's healthcheck every 1 s instead of 30 s (what the checks cost)
  ours, logs at WARNING   the same, without the INFO log line each service writes per message (what logging costs)
  raw     the same two hops in raw pyzmq (tests/bench/e2e_roles.py) in the same image: each appliance
          forwards at once, the mirror publishes when both answered. Broker wiring: through zmq.proxy.
Both times are stamped by time.time() in two containers; all containers share the host's clock, so the
difference needs no clock sync. CPU per toggle: the CPU time of every container of the routine (the probe
not counted; the cgroup's own count, from Docker's stats) while the probe records, over the toggles in that time.
Cases are interleaved: R rounds of N toggles each, pooled per case.
Needs Docker (builds smarthome:latest); writes tests/bench/results/e2e_latency.md and .png. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import yaml

from tests.bench.benchlib import ROOT, bar_chart, docker_version, header, load, median, percentile, table, write

PERIOD = 0.05  # seconds between toggles: far above any answer time, so toggles never overlap
BENCH_DIR = str(Path(__file__).resolve().parent)
APPLIANCES = {"coffee-maker": 5557, "toaster": 5558}
QUIET = "ours, logs at WARNING"  # what the INFO log lines (one per message and hop) cost
CHECKED = "ours, health every 1 s"  # what Docker's healthchecks cost at the interval shipped before
CASES = [(wiring, path) for wiring in ("direct", "broker") for path in ("ours", CHECKED, QUIET, "raw")]


def write_configs(directory: Path) -> None:
    """The shipped configs with prep_time 0, the light toggling every PERIOD, and only the routine's services."""
    keep = {"light-switch", "broker", "smart-mirror", *APPLIANCES}
    for name in ("smarthome.yml", "smarthome.broker.yml"):
        config = yaml.safe_load((ROOT / "config" / name).read_text())
        config["services"] = {k: v for k, v in config["services"].items() if k in keep}
        config["services"]["light-switch"]["toggle_period"] = PERIOD
        for appliance in APPLIANCES:
            config["services"][appliance]["prep_time"] = 0
        (directory / name).write_text(yaml.safe_dump(config, sort_keys=False))
        # A compose file for the QUIET case: the same services, logging only warnings.
        quiet = {
            "services": {service: {"environment": {"SMARTHOME_LOG_LEVEL": "WARNING"}} for service in config["services"]}
        }
        (directory / f"quiet-{name}").write_text(yaml.safe_dump(quiet))
    directory.chmod(0o755)  # the services run as a non-root user


def start(client: docker.DockerClient, network: str, args: list[str], alias: str | None = None, keys: bool = False):
    """A container of the project's image running e2e_roles.py with `args`, on `network`; with `keys`, the stack's
    CurveZMQ keys at /keys, read as root (the tools' secret belongs to the host's user)."""
    volumes = {BENCH_DIR: {"bind": "/bench", "mode": "ro"}}
    if keys:
        volumes[str(ROOT / "keys")] = {"bind": "/keys", "mode": "ro"}
    container = client.containers.create(
        "smarthome:latest",
        entrypoint=["python", "/bench/e2e_roles.py", *args],
        volumes=volumes,
        user="root" if keys else None,
        init=True,
    )
    client.networks.get(network).connect(container, aliases=[alias] if alias else None)
    container.start()
    return container


def probe_result(probe, toggles: int, stack: list) -> dict:
    """What the probe measured, and the CPU time the `stack`'s containers spent per toggle meanwhile."""
    started, cpu = time.monotonic(), cpu_seconds(stack)
    try:
        probe.wait(timeout=toggles * PERIOD * 3 + 60)
        result = json.loads(probe.logs(stderr=False).decode().strip().splitlines()[-1])
    except Exception:
        print(probe.logs().decode(), file=sys.stderr)
        raise
    toggled = (time.monotonic() - started) / PERIOD  # the light toggles on its timer all along
    return {**result, "cpu_ms": (cpu_seconds(stack) - cpu) * 1e3 / toggled}


def cpu_seconds(containers: list) -> float:
    """User + system time so far of every process of `containers` (each container's cgroup count)."""
    total = 0
    for container in containers:
        total += container.stats(stream=False, one_shot=True)["cpu_stats"]["cpu_usage"]["total_usage"]
    return total / 1e9


def ours(client: docker.DockerClient, wiring: str, config_dir: str, toggles: int, path: str) -> dict:
    """The real services under compose, as shipped but for `path`; the probe on the stack's network (it
    records from the mirror's first view on)."""
    project = f"smarthome-bench-{uuid.uuid4().hex[:6]}"
    files = ["-f", "docker-compose.yml"] + (["-f", "docker-compose.broker.yml"] if wiring == "broker" else [])
    if path == QUIET:
        files += ["-f", f"{config_dir}/quiet-smarthome{'.broker' if wiring == 'broker' else ''}.yml"]
    services = ["light-switch", *APPLIANCES, "smart-mirror"] + (["broker"] if wiring == "broker" else [])
    compose = ["docker", "compose", "-p", project, *files]
    env = {**os.environ, "SMARTHOME_CONFIG_DIR": config_dir}
    if path == CHECKED:
        env["SMARTHOME_HEALTHCHECK_INTERVAL"] = "1s"
    endpoints = ["tcp://broker:5560"] if wiring == "broker" else ["tcp://light-switch:5556", "tcp://smart-mirror:5561"]
    try:
        sh(*compose, "up", "--detach", *services, env=env)
        stack = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        probe = start(client, f"{project}_home", ["probe", "ours", ",".join(endpoints), str(toggles)], keys=True)
        try:
            return probe_result(probe, toggles, stack)
        finally:
            probe.remove(force=True)
    finally:
        sh(*compose, "down", "--timeout", "5", env=env)


def raw(client: docker.DockerClient, wiring: str, toggles: int) -> dict:
    """The same two hops in raw pyzmq, one container per role on a private network."""
    network = client.networks.create(f"smarthome-bench-{uuid.uuid4().hex[:6]}")
    if wiring == "broker":
        roles = {"broker": ["proxy", "tcp://*:5559", "tcp://*:5560"]}
        light_out, mirror_in, mirror_out = "tcp://broker:5559", "tcp://broker:5560", "tcp://broker:5559"
        appliances = {name: ["tcp://broker:5560", "tcp://broker:5559"] for name in APPLIANCES}
    else:
        roles = {}
        light_out, mirror_out = "tcp://*:5556", "tcp://*:5561"
        mirror_in = ",".join(f"tcp://{name}:{port}" for name, port in APPLIANCES.items())
        appliances = {name: ["tcp://light-switch:5556", f"tcp://*:{port}"] for name, port in APPLIANCES.items()}
    roles["smart-mirror"] = ["mirror", mirror_in, mirror_out, str(len(APPLIANCES))]
    for i, (name, (sub, pub)) in enumerate(appliances.items()):
        roles[name] = ["appliance", sub, pub, str(i)]
    containers = []
    try:
        for name, args in roles.items():
            containers.append(start(client, network.name, args, alias=name))
        probe_endpoint = "tcp://broker:5560" if wiring == "broker" else "tcp://smart-mirror:5561"
        probe = start(client, network.name, ["probe", "raw", probe_endpoint, str(toggles)])
        containers.append(probe)
        # Last, as it toggles at once; what the probe or the appliances miss while joining is warm-up.
        light = ["light", light_out, str(PERIOD), str(toggles + 500)]
        containers.append(start(client, network.name, light, alias="light-switch"))
        return probe_result(probe, toggles, [c for c in containers if c is not probe])
    finally:
        for container in containers:
            container.remove(force=True)
        network.remove()


def sh(*command: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=False)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toggles", type=int, default=500, help="measured toggles per case and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; toggles are pooled per case")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so every container started is removed too
    client = docker.from_env()
    top = header(
        "End-to-end latency across containers: light switch -> appliances -> mirror",
        " ".join(["python -m tests.bench.e2e_latency", *sys.argv[1:]]),
        {"Docker Engine": docker_version()},
    )
    sh("docker", "compose", "build")
    pooled: dict[tuple[str, str], dict] = {
        case: {"latencies": [], "missed": 0, "loads": [], "cpu_ms": []} for case in CASES
    }
    with tempfile.TemporaryDirectory() as config_dir:
        write_configs(Path(config_dir))
        for round_ in range(options.rounds):
            for wiring, path in CASES:
                before = load()
                if path == "raw":
                    got = raw(client, wiring, options.toggles)
                else:
                    got = ours(client, wiring, config_dir, options.toggles, path)
                cell = pooled[wiring, path]
                cell["latencies"] += got["latencies"]
                cell["missed"] += got["missed"]
                cell["cpu_ms"].append(got["cpu_ms"])
                cell["loads"] += [before, load()]
                ms = sorted(got["latencies"])
                print(
                    f"round {round_ + 1} {wiring:6} {path:22} p50 {ms[len(ms) // 2] * 1e3:.2f} ms "
                    f"p99 {percentile(ms, 99) * 1e3:.2f} ms missed {got['missed']}",
                    file=sys.stderr,
                )
    report(top, pooled, options)


def report(top: str, pooled: dict[tuple[str, str], dict], options: argparse.Namespace) -> None:
    stats = {}
    for case, cell in pooled.items():
        ms = [s * 1e3 for s in cell["latencies"]]
        stats[case] = {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": max(ms), "n": len(ms)}
    rows = []
    for wiring, path in CASES:
        s, base = stats[wiring, path], stats[wiring, "raw"]
        cell = pooled[wiring, path]
        rows.append(
            [
                wiring,
                path,
                f"{s['n']:,}/{s['n'] + cell['missed']:,}",
                f"{s['p50']:.2f} ms",
                f"{s['p99']:.2f} ms",
                f"{s['max']:.2f} ms",
                f"{s['p99'] / base['p99']:.1f}x",
                f"{median(cell['cpu_ms']):.2f} ms",
                f"{median(cell['cpu_ms']) / median(pooled[wiring, 'raw']['cpu_ms']):.1f}x",
                f"{min(cell['loads']):.2f}-{max(cell['loads']):.2f}",
            ]
        )
    text = (
        top + f"- method: {options.rounds} interleaved rounds x {options.toggles} toggles per case, a toggle every "
        f"{PERIOD * 1e3:.0f} ms, prep_time 0; latency = mirror's publish time - light's publish time (two hops)\n\n"
        + table(
            ["wiring", "path", "toggles answered", "p50", "p99", "max", "p99 x raw", "CPU per toggle", "x raw", "load"],
            rows,
            right={2, 3, 4, 5, 6, 7, 8, 9},
        )
        + "\nGoal: p99 < 2 ms direct, < 3 ms broker. CPU per toggle: every container of the routine together "
        "(median of the rounds). Ours includes what the real services do per message: "
        "decode and validate, CurveZMQ, log lines at INFO (Docker's json-file log driver), the mirror's view, "
        "and Docker's healthchecks (each a `docker exec`, every 30 s as shipped).\n"
    )
    write("e2e_latency", text)
    groups = [f"{wiring} {path}" for wiring, path in CASES]
    series = {q: [stats[case][q] for case in CASES] for q in ("p50", "p99", "max")}
    bar_chart("e2e_latency", "Light -> appliances -> mirror across containers (same run)", "ms", groups, series)


if __name__ == "__main__":
    main()
