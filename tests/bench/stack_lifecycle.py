"""Benchmark: how fast the compose stack comes up and goes down, how much memory each service uses, and
what the idle stack costs in CPU.

    .venv/bin/python -m tests.bench.stack_lifecycle [--runs N]

With images built and prep times 0, per run: `docker compose up --detach` until the mirror logs that
everything is ready; RSS of each service's process; the whole machine's CPU while the stack idles
(healthchecks as shipped, every 30 s, and every 1 s); `docker compose down`. The baselines, measured in
the same run on the same image: a container running an idle `python` (start, RSS, stop), and the machine's
CPU with no stack up. Prints a markdown table with medians and ratios to the baseline. A report, not a test:
nothing is asserted.
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
from pathlib import Path

import docker
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["light-switch", "coffee-maker", "toaster", "smart-mirror", "web"]
ALL_READY = "MIRROR coffee=ready toast=ready"
DEADLINE = 60.0
IDLE_SECONDS = 20.0  # how long CPU is counted while the stack idles


def sh(*command: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return result.stdout


def rss_mib(container) -> float:
    """Resident memory of the container's python process (tini, PID 1, is not counted)."""
    top = container.top(ps_args="-o pid,rss,comm")
    rss_kib = [int(rss) for _, rss, command in top["Processes"] if command.startswith("python")]
    return sum(rss_kib) / 1024


def zero_prep_config(directory: Path) -> None:
    config = yaml.safe_load((ROOT / "config" / "smarthome.yml").read_text())
    for name in ("coffee-maker", "toaster"):
        config["services"][name]["prep_time"] = 0
    (directory / "smarthome.yml").write_text(yaml.safe_dump(config))
    directory.chmod(0o755)  # the services run as a non-root user


def busy_share(seconds: float) -> float:
    """The share of the machine's CPU time (all cores) spent busy over the next `seconds`, from /proc/stat."""

    def ticks() -> tuple[int, int]:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
        return user + nice + system + irq + softirq + steal, idle + iowait

    busy0, idle0 = ticks()
    time.sleep(seconds)  # ok: the measuring window, not synchronisation
    busy1, idle1 = ticks()
    return (busy1 - busy0) / ((busy1 - busy0) + (idle1 - idle0))


def measure_stack(client: docker.DockerClient, config_dir: str, healthcheck_interval: str) -> dict[str, float]:
    project = f"smarthome-bench-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "SMARTHOME_CONFIG_DIR": config_dir, "SMARTHOME_HEALTHCHECK_INTERVAL": healthcheck_interval}
    compose = ["docker", "compose", "-p", project]
    started = time.perf_counter()
    try:
        sh(*compose, "up", "--detach", env=env)
        label = {"label": [f"com.docker.compose.project={project}", "com.docker.compose.service=smart-mirror"]}
        [mirror] = client.containers.list(filters=label)
        while ALL_READY not in mirror.logs().decode():
            if time.perf_counter() - started > DEADLINE:
                sys.exit(f"the mirror did not report all ready within {DEADLINE}s")
            time.sleep(0.02)  # ok: polling interval of a deadline loop
        figures = {"up_to_ready": time.perf_counter() - started}
        for service in SERVICES:
            label = {"label": [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]}
            [container] = client.containers.list(filters=label)
            figures[f"rss:{service}"] = rss_mib(container)
        figures["idle_cpu"] = busy_share(IDLE_SECONDS)
    finally:
        started = time.perf_counter()
        sh(*compose, "down", env=env)
        down = time.perf_counter() - started
    return {**figures, "down": down}


def measure_baseline(client: docker.DockerClient) -> dict[str, float]:
    """An idle python in the same image: the floor for start time, RSS and stop time."""
    started = time.perf_counter()
    container = client.containers.run(
        "smarthome:latest",
        entrypoint=["python", "-c", "import signal; print('up', flush=True); signal.pause()"],
        init=True,
        detach=True,
    )
    while b"up" not in container.logs():
        time.sleep(0.02)  # ok: polling interval of a deadline loop
    up = time.perf_counter() - started
    rss = rss_mib(container)
    started = time.perf_counter()
    container.stop(timeout=10)
    down = time.perf_counter() - started
    container.remove()
    return {"up_to_ready": up, "rss": rss, "down": down, "idle_cpu": busy_share(IDLE_SECONDS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    client = docker.from_env()
    sh("docker", "compose", "build")
    with tempfile.TemporaryDirectory() as config_dir:
        zero_prep_config(Path(config_dir))
        stack, every_second, baseline = [], [], []
        for _ in range(runs):  # interleaved, so a busy period hits every case alike
            stack.append(measure_stack(client, config_dir, "30s"))
            every_second.append(measure_stack(client, config_dir, "1s"))
            baseline.append(measure_baseline(client))

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print(f"Stack lifecycle, median of {runs} runs (baseline: one idle python container, same image, same run)\n")
    print(f"- load (1-min average) at the end: {os.getloadavg()[0]:.2f}\n")
    print("| figure | ours | baseline | ratio | target |")
    print("|---|---:|---:|---:|---|")
    for key, unit, target in (("up_to_ready", "s", "<= 5 s"), ("down", "s", "<= 2 s")):
        ours, base = median(stack, key), median(baseline, key)
        name = key.replace("_", " ")
        print(f"| {name} (whole stack) | {ours:.2f} {unit} | {base:.2f} {unit} | {ours / base:.1f}x | {target} |")
    base_rss = median(baseline, "rss")
    for service in SERVICES:
        ours = median(stack, f"rss:{service}")
        target = "(aiohttp)" if service == "web" else "<= 30 MiB"
        print(f"| RSS {service} | {ours:.1f} MiB | {base_rss:.1f} MiB | {ours / base_rss:.2f}x | {target} |")
    base_cpu = median(baseline, "idle_cpu")
    for rows, interval in ((stack, "30 s, as shipped"), (every_second, "1 s")):
        ours = median(rows, "idle_cpu")
        print(
            f"| machine CPU, stack idle, healthcheck every {interval} | {ours:.1%} | {base_cpu:.1%} (no stack) "
            f"| +{(ours - base_cpu) * 200:.0f}% of a core | |"
        )


if __name__ == "__main__":
    main()
