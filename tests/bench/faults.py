"""Benchmark: how fast the compose stack heals from each fault, under load, in both wirings.

    flock /tmp/smarthome-docker.lock .venv/bin/python -m tests.bench.faults [--quick] [--only TEXT] [--runs N]

Builds the image and brings up the compose stack (a project of its own, prep times 0 from a config
directory of its own, torn down at the end) in the direct wiring, then in the broker wiring. Throughout,
the bench's own publisher (CurveZMQ with the host tools' key, as `smarthome light` uses) sends the wanted
light state as `light-set` commands at LOAD_RATE msg/s to the light switches (direct: the switch's
commands port; broker: the broker's XSUB). Each fault flips the wanted state (during a crash, pause or
partition; right after a compose command), so the faulted service has a change to catch up on.

Network faults are made from the host in the toaster's network namespace (support.firewalled: iptables;
support.delayed: tests/netem.py on an NFQUEUE, as this kernel has no netem), the container keeping cap_drop ALL:
10 % loss each way, 200 ± 50 ms on what it sends (and with a quarter of its packets sent at once: reordered),
a cut of one direction for FAULT_SECONDS, a link flapping, and a DNS outage (its lookups hang) while it is
partitioned. Each runs RUNS times, as does the long partition of the toaster and of the one connected to many
(the broker; in direct wiring, the mirror); the row gives the median and the worst.

Per fault x service x wiring:
- true again after: from the fault's end (for loss, delay and reordering, which last: from the light's
  change under them) until the smart mirror's summary line equals the truth (every appliance instance that
  exists, in the state the wanted light implies), by the line's own timestamp;
- missed: messages the services counted as missed (their `missed N messages from` lines) from the fault's
  start until WINDOW after recovery;
- silent: the load's commands sent meanwhile that a light switch neither received nor counted as missed
  (sent - received - counted, from the switches' `switched ... by` and `missed` lines; a few in flight at the
  window's edges);
- restarts: restarts (RestartCount) of the project's containers meanwhile;
- ghosts: instances the mirror shows that do not exist, left at the end / the most at once after the fault.

A report, not a test: nothing is asserted. --quick: the broker wiring, faults of the toaster and the broker.
--only TEXT (repeatable): the faults whose name contains a TEXT (both wirings); --runs N: each repeated fault
N times. Either one: nothing is written to the results.
The full run writes tests/bench/results/faults.md; a service's logs go to tests/out/ when it never healed.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import smarthome
import yaml
import zmq
from smarthome.core.config import LightSwitchConfig, load_config
from smarthome.core.identity import TOOLS, Identity
from smarthome.core.messaging import Outbox, send_frames
from smarthome.tools.cli import publish_endpoint

from tests.support.base import poll, stamp
from tests.support.faults import (
    CUT_FROM,
    CUT_TO,
    DNS_OUTAGE,
    delayed,
    firewalled,
    kill_service,
    lossy,
    partitioned,
    paused,
)
from tests.support.peers import with_key
from tests.support.stack import HEALTHCHECK_INTERVAL, WIRINGS, Stack

ROOT = Path(__file__).resolve().parents[2]

LOAD_RATE = 200  # light-set commands per second, all run long
FAULT_SECONDS = 5.0  # how long a pause or a partition lasts: longer than offline_after (3 s), so peers drop it
LONG_PARTITION = 20.0  # one longer partition: TCP's retransmission backoff would show here, heartbeats do not
WINDOW = 2.0  # seconds watched after recovery: a gap shows at the sender's next message or heartbeat (1 s)
HEAL = 30.0  # seconds after which a fault counts as never healed
FLAP_SECONDS, FLAP_DOWN, FLAP_UP = 30.0, 1.0, 1.0  # a link that flaps: down 1 s, up 1 s, for 30 s
CUT_OFF = ["PREROUTING ! -i lo -j DROP", "OUTPUT ! -o lo -j DROP"]  # both ways: a flap's down second
RUNS = 5  # each network fault is run this often: its row gives the median and the worst
COMMANDS = "light-set"
APPLIANCES = {"coffee": "coffee-maker", "toast": "toaster"}  # the mirror's topics and who publishes them
CONFIGS = {"direct": "smarthome.yml", "broker": "smarthome.broker.yml"}
RESULTS = ROOT / "tests" / "bench" / "results" / "faults.md"
OUT = ROOT / "tests" / "out"
MISSED = re.compile(r"missed (\d+) messages from")


def hold(seconds: float) -> None:
    time.sleep(seconds)  # ok: how long a fault lasts, or a window watched on purpose


class Load:
    """The bench's own light remote: the wanted state, LOAD_RATE times a second, plus a heartbeat a second."""

    def __init__(self, config: Path) -> None:
        self.config = config
        loaded = load_config(config)
        self.zmtp = loaded.zmtp
        self.heartbeat_interval = loaded.heartbeat_interval
        self.endpoint = publish_endpoint(loaded, COMMANDS)  # the switch's commands port, or the broker's XSUB
        self.server = loaded.binder_of(self.endpoint) or ""
        self.outbox = load_outbox(config)
        self.receivers = [name for name, s in loaded.services.items() if isinstance(s, LightSwitchConfig)]
        self.on = True  # what the light should be: the switches start on
        self.sent = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def toggle(self) -> None:
        self.on = not self.on

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def _run(self) -> None:
        context = zmq.Context()
        sock = with_key(context.socket(zmq.PUB), self.config, TOOLS, server=self.server)
        sock.linger = 0
        sock.heartbeat_ivl = int(self.zmtp.heartbeat_ivl * 1000)  # as every service's socket: a dead peer is
        sock.heartbeat_timeout = int(self.zmtp.heartbeat_timeout * 1000)  # dropped and reconnected in seconds
        sock.heartbeat_ttl = int(self.zmtp.heartbeat_ttl * 1000)
        sock.connect(self.endpoint)
        started = time.monotonic()
        heartbeat = started
        try:
            while not self._stop.wait(max(0.0, started + self.sent / LOAD_RATE - time.monotonic())):
                send_frames(sock, self.outbox.publish({"state": "ON" if self.on else "OFF"})[1])
                self.sent += 1
                if time.monotonic() >= heartbeat:
                    send_frames(sock, self.outbox.heartbeat())
                    heartbeat += self.heartbeat_interval
        finally:
            self.seconds = time.monotonic() - started
            sock.close()
            context.term()


@functools.cache
def load_outbox(config: Path) -> Outbox:
    """The load's one life for the whole run: a new life's first commands would wait for its heartbeat (rule L4 of
    docs/protocol.md) while the switches still hear the last one, and a new outbox would start its seq anew."""
    loaded = load_config(config)
    return Outbox(Identity("bench-load", loaded), COMMANDS, loaded.topics[COMMANDS])


@dataclass
class Row:
    wiring: str
    fault: str
    service: str
    recovered: list[float | None] = field(default_factory=list)  # per run, seconds from the fault's end (or
    # from the light's change, for a fault that lasts: see CHANGE_UNDER); None: never within HEAL
    missed: dict[str, int] = field(default_factory=dict)  # service -> messages it counted as missed, all runs
    silent: int | None = None  # the load's messages lost and not counted; None: no switch to tell
    restarts: int = 0
    ghosts_left: int = 0
    ghosts_seen: int = 0
    note: str = ""


class Run:
    """One wiring's stack under load, and how to read the truth and the mirror off it."""

    def __init__(self, stack: Stack, load: Load, wiring: str) -> None:
        self.stack, self.load, self.wiring = stack, load, wiring

    def container(self, service: str) -> Any:
        [container] = self.stack.containers(service)
        return container

    def instances(self) -> dict[str, set[str]]:
        """Topic -> the hostnames (instances) of its appliance's containers: those compose has not removed."""
        return {
            topic: {c.attrs["Config"]["Hostname"] for c in self.stack.containers(service)}
            for topic, service in APPLIANCES.items()
        }

    def truth(self, instances: dict[str, set[str]]) -> dict[str, str]:
        """What the mirror should show: each instance ready when the light is on (prep time 0), else idle."""
        state = "ready" if self.load.on else "idle"
        view = {}
        for topic, hosts in instances.items():
            labels = [topic] if len(hosts) == 1 else [f"{topic}@{host}" for host in sorted(hosts)]
            view |= dict.fromkeys(labels, state)
        return view

    def summaries(self) -> list[tuple[float, dict[str, str]]]:
        """The mirror's summary lines: (when, {label: state}), oldest first."""
        found = []
        for line in self.stack.logs("smart-mirror").log_lines():
            when, message = stamp(line), line.split(maxsplit=2)[-1]
            if when and message.startswith("MIRROR coffee"):
                found.append((when, dict(part.split("=", 1) for part in message.split()[1:])))
        return sorted(found, key=lambda summary: summary[0])

    def true_since(self, truth: dict[str, str]) -> float | None:
        """When the mirror's latest summary was logged, if it equals `truth`."""
        summaries = self.summaries()
        return summaries[-1][0] if summaries and summaries[-1][1] == truth else None

    def restarts(self) -> dict[str, int]:
        return {c.id: c.attrs["RestartCount"] for c in self.stack.containers()}

    def receivers(self) -> set[str]:
        """The ids of the containers the load's commands go to: the light switches."""
        return {c.id for service in self.load.receivers for c in self.stack.containers(service)}

    def losses(self, since: float, until: float, receivers: set[str], sent: int) -> tuple[dict[str, int], int | None]:
        """Service -> messages it counted as missed between `since` and `until`; and of the `sent` commands of the
        load, those that a switch of `receivers` (still there: a removed one took its logs along) neither
        received nor counted."""
        counted: dict[str, int] = {}
        silent: list[int] = []
        load = self.load.outbox.me.sender
        for container in self.stack.containers():
            service = container.labels["com.docker.compose.service"]
            received = lost = 0
            for line in container.logs(since=int(since)).decode(errors="replace").splitlines():
                if not since <= (stamp(line) or 0) <= until:
                    continue
                if match := MISSED.search(line):
                    counted[service] = counted.get(service, 0) + int(match[1])
                    lost += int(match[1]) if line.endswith(load) else 0
                elif line.endswith(f" by {load}"):  # the switch's line for each command it took
                    received += 1
            if container.id in receivers:
                silent.append(max(0, sent - received - lost))  # a message in flight at an edge: -1
        return counted, sum(silent) if silent else None

    def save_logs(self, row: Row) -> None:
        OUT.mkdir(exist_ok=True)
        path = OUT / f"faults-{row.wiring}-{row.fault.replace(' ', '_')}-{row.service}.log"
        path.write_text(self.stack.all_logs())
        row.note = f"logs: {path.relative_to(ROOT)}"


def ghosts(view: dict[str, str], instances: dict[str, set[str]]) -> int:
    """Instances `view` shows that do not exist: a labelled host that is gone, or any one where none runs."""
    count = 0
    for label, state in view.items():
        topic, _, host = label.partition("@")
        gone = host and host not in instances[topic]
        nobody = not host and state != "unknown" and not instances[topic]
        count += bool(gone or nobody)
    return count


# --- the faults: each does its fault (flipping the wanted light) and returns when it ended ---


def crash(run: Run, service: str) -> float:
    kill_service(run.container(service))  # the restart policy brings it back: that is part of the recovery
    ended = time.time()
    run.load.toggle()
    return ended


def pause(run: Run, service: str, seconds: float = FAULT_SECONDS) -> float:
    with paused(run.container(service)):
        run.load.toggle()
        hold(seconds)
    return time.time()


def partition(run: Run, service: str, seconds: float = FAULT_SECONDS) -> float:
    with partitioned(run.stack, run.container(service)):
        run.load.toggle()
        hold(seconds)
    return time.time()


def long_partition(run: Run, service: str) -> float:
    return partition(run, service, LONG_PARTITION)


def blocked(rules: list[str]) -> Callable[[Run, str], float]:
    """A fault made by iptables `rules` in the service's network namespace for FAULT_SECONDS, the light
    flipping at its start."""

    def fault(run: Run, service: str) -> float:
        with firewalled(run.container(service), rules):
            run.load.toggle()
            hold(FAULT_SECONDS)
        return time.time()

    return fault


def dns_outage(run: Run, service: str) -> float:
    """The service's name lookups hang (a resolver cut off) while it is partitioned and the light flips."""
    with firewalled(run.container(service), DNS_OUTAGE):
        ended = partition(run, service)
        poll(lambda: run.true_since(run.truth(run.instances())), HEAL)  # the outage lasts until the truth
    return ended


def flapping(run: Run, service: str) -> float:
    """The service's link down FLAP_DOWN, up FLAP_UP, for FLAP_SECONDS; the light flips at the start."""
    container, ends = run.container(service), time.monotonic() + FLAP_SECONDS
    run.load.toggle()
    while time.monotonic() < ends:
        with firewalled(container, CUT_OFF):
            hold(FLAP_DOWN)
        hold(FLAP_UP)
    return time.time()


def under(condition: Callable[[Any], Any]) -> Callable[[Run, str], float]:
    """A fault that lasts (loss, delay, reordering): the light flips under it, and the time is counted from
    that change until the truth, which must come while the condition holds."""

    def fault(run: Run, service: str) -> float:
        with condition(run.container(service)):
            changed = time.time()
            run.load.toggle()
            poll(lambda: run.true_since(run.truth(run.instances())), HEAL)
        return changed

    return fault


def after(command: Callable[[Run, str], None]) -> Callable[[Run, str], float]:
    """A fault that is a compose command: it ends when the command returns, and the light flips then."""

    def fault(run: Run, service: str) -> float:
        command(run, service)
        ended = time.time()
        run.load.toggle()
        return ended

    return fault


CUT = f"cut from the service {FAULT_SECONDS:g} s"
CUT_BACK = f"cut to the service {FAULT_SECONDS:g} s"
LOSS = "loss 10 %"
DELAY = "delay 200 ± 50 ms"
REORDER = "reordering 25 %"
FLAPPING = f"link flapping {FLAP_DOWN:g} s / {FLAP_UP:g} s for {FLAP_SECONDS:g} s"
DNS = f"DNS outage + partition {FAULT_SECONDS:g} s"
RESTART_ALL = "compose restart (all)"
FAULTS: dict[str, Callable[[Run, str], float]] = {
    "crash (SIGKILL)": crash,
    f"pause {FAULT_SECONDS:g} s": pause,
    f"partition {FAULT_SECONDS:g} s": partition,
    f"partition {LONG_PARTITION:g} s": long_partition,
    "recreate": after(lambda run, service: run.stack.recreate(service)),
    "scale 1 → 3": after(lambda run, service: run.stack.scale(service, 3)),
    "scale 3 → 1": after(lambda run, service: run.stack.scale(service, 1)),
    "restart": after(lambda run, service: run.stack.compose("restart", service)),
    LOSS: under(lambda container: firewalled(container, lossy(10))),
    DELAY: under(lambda container: delayed(container, 0.2, 0.05)),
    REORDER: under(lambda container: delayed(container, 0.2, 0.05, reorder=0.25)),
    CUT: blocked(CUT_FROM),
    CUT_BACK: blocked(CUT_TO),
    FLAPPING: flapping,
    DNS: dns_outage,
    RESTART_ALL: after(lambda run, service: run.stack.compose("restart")),
}
CHANGE_UNDER = {LOSS, DELAY, REORDER}  # timed from the light's change, not from the fault's end
EVERY_SERVICE = ["crash (SIGKILL)", f"pause {FAULT_SECONDS:g} s", f"partition {FAULT_SECONDS:g} s", "recreate"]
NETWORK = [LOSS, DELAY, REORDER, CUT, CUT_BACK, FLAPPING, DNS]  # the toaster's link, RUNS times each
ON_THE_PATH = ["light-switch", "coffee-maker", "toaster", "smart-mirror"]  # from the light to the mirror's line


def plan(wiring: str, quick: bool) -> list[tuple[str, str, int]]:
    """(fault, service, runs) in the order they run."""
    broker = wiring == "broker"
    services = ["toaster"] if quick else [*ON_THE_PATH, *(["broker"] if broker else [])]
    steps = [(fault, service, 1) for service in services for fault in EVERY_SERVICE]
    if quick:
        return steps
    # The long partition, with one light change during it: of an appliance (it connects to the light), and of
    # the one that connects to many: the broker, every service's peer; in direct wiring, the mirror.
    hub = "broker" if broker else "smart-mirror"
    steps += [(f"partition {LONG_PARTITION:g} s", cut, RUNS) for cut in ["toaster", hub]]
    steps += [(fault, "toaster", RUNS) for fault in NETWORK]
    if broker:
        steps += [("scale 1 → 3", "toaster", 1), ("scale 3 → 1", "toaster", 1), ("restart", "broker", 1)]
    steps.append((RESTART_ALL, "all", 1))
    return steps


def measure(run: Run, fault: str, service: str, runs: int) -> Row:
    row = Row(run.wiring, fault, service)
    for _ in range(runs):
        once(run, row)
        if row.note:
            break
    print(f"  {fault:<36} {service:<13} {describe(row)}", flush=True)
    return row


def once(run: Run, row: Row) -> None:
    """One run of `row`'s fault: its time, losses, restarts and ghosts added to the row."""
    if not poll(lambda: run.true_since(run.truth(run.instances())), HEAL):
        row.note = "not true before the fault"
        run.save_logs(row)
        return
    restarts, receivers, sent = run.restarts(), run.receivers(), run.load.sent
    started = time.time()
    ended = FAULTS[row.fault](run, row.service)
    instances = run.instances()
    truth = run.truth(instances)
    recovered = None
    if poll(lambda: run.true_since(truth), HEAL):
        hold(WINDOW)
        final = poll(lambda: run.true_since(truth), HEAL)  # later, if it flapped meanwhile
        recovered = max(0.0, final - ended) if final else None
    row.recovered.append(recovered)
    if recovered is None:
        run.save_logs(row)
    until = time.time()
    missed, silent = run.losses(started, until, receivers, run.load.sent - sent)
    for name, count in missed.items():
        row.missed[name] = row.missed.get(name, 0) + count
    if silent is not None:
        row.silent = (row.silent or 0) + silent
    row.restarts += sum(count - restarts.get(key, 0) for key, count in run.restarts().items())
    seen = [view for when, view in run.summaries() if when >= ended]
    row.ghosts_left = max(row.ghosts_left, ghosts(run.summaries()[-1][1], instances))
    row.ghosts_seen = max(row.ghosts_seen, max((ghosts(view, instances) for view in seen), default=0))


def missed(row: Row) -> str:
    """'0', or the total and who counted it: '290: light-switch 145, kitchen-light 145'."""
    where = ", ".join(f"{service} {count}" for service, count in sorted(row.missed.items()))
    return f"{sum(row.missed.values())}: {where}" if where else "0"


def healed(row: Row) -> str:
    """The time it took (one run), or the median and the worst of its runs; or that it did not heal."""
    times = [t for t in row.recovered if t is not None]
    if not times or len(times) < len(row.recovered):
        took = f"> {HEAL:g} s in {len(row.recovered) - len(times)} of {len(row.recovered)}"
    elif len(times) == 1:
        took = f"{times[0]:.2f} s"
    else:
        took = f"{statistics.median(times):.2f} / {max(times):.2f} s"
    took += " (from the change)" if row.fault in CHANGE_UNDER else ""
    return f"{took} ({row.note})" if row.note else took


def silent(row: Row) -> str:
    return "-" if row.silent is None else str(row.silent)


def describe(row: Row) -> str:
    losses = f"missed {missed(row)}, silent {silent(row)}"
    return f"{healed(row)}, {losses}, restarts {row.restarts}, ghosts {row.ghosts_left}/{row.ghosts_seen}"


def zero_prep_configs(directory: Path) -> None:
    """The shipped configs with every prep_time 0: the mirror's line follows the light at once."""
    for path in (ROOT / "config").glob("*.yml"):
        config = yaml.safe_load(path.read_text())
        for service in config["services"].values():
            if "prep_time" in service:
                service["prep_time"] = 0
        (directory / path.name).write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(ROOT / "config" / "smarthome.schema.json", directory)
    directory.chmod(0o755)  # the services run as a non-root user


def run_wiring(
    engine: docker.DockerClient, wiring: str, config: Path, steps: list[tuple[str, str, int]]
) -> tuple[list[Row], float]:
    """Every fault of the plan on a fresh stack of `wiring`; the rows and the load's real rate."""
    stack = Stack(engine, *WIRINGS[wiring], kind="bench")
    print(f"{wiring} wiring ({stack.project})", flush=True)
    try:
        stack.compose("up", "--detach", "--wait", "--wait-timeout", "60")
        with Load(config) as load:
            run = Run(stack, load, wiring)
            rows = [measure(run, fault, service, runs) for fault, service, runs in steps]
        return rows, load.rate
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")


def table(rows: list[Row]) -> str:
    lines = [
        "| wiring | fault | service | runs | true again after (median / worst) | missed (counted by) | silent "
        "| restarts | ghosts left/seen |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.wiring} | {row.fault} | {row.service} | {len(row.recovered)} | {healed(row)} | {missed(row)} "
            f"| {silent(row)} "
            f"| {row.restarts} "
            f"| {row.ghosts_left} / {row.ghosts_seen} |"
        )
    return "\n".join(lines)


def setting(engine: docker.DockerClient, rates: list[float], load_average: float) -> str:
    """Date, machine, load and versions: what the figures depend on."""
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    compose = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True).stdout
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores ({cpu}), "
        f"Linux {platform.release()}, load average {load_average:.1f} at the start (a shared machine); "
        f"Docker Engine {engine.version()['Version']}, Compose {compose.strip()}; Python {platform.python_version()}, "
        f"pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}, smarthome {smarthome.__version__}. "
        f"Load: `{COMMANDS}` commands at {LOAD_RATE} msg/s (measured "
        f"{', '.join(f'{rate:.0f}' for rate in rates)}), prep times 0, heartbeats every 1 s, offline after 3."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the broker wiring, the toaster's and broker's faults")
    parser.add_argument("--only", action="append", default=[], help="only faults whose name contains this (repeatable)")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of each repeated fault")
    args = parser.parse_args()
    quick, partial = args.quick, args.quick or bool(args.only) or args.runs != RUNS
    began, load_average = time.monotonic(), os.getloadavg()[0]
    engine = docker.from_env()
    Stack(engine).compose("build")
    rows: list[Row] = []
    rates: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        zero_prep_configs(Path(directory))
        os.environ["SMARTHOME_CONFIG_DIR"] = directory  # compose mounts it; the tools read it
        os.environ.setdefault(HEALTHCHECK_INTERVAL, "1s")  # health checked every second: `up --wait` returns sooner
        os.environ["SMARTHOME_KEYS"] = str(ROOT / "keys")  # the keys compose made, the tools' own among them
        for wiring in ["broker"] if quick else list(WIRINGS):
            steps = [
                (fault, service, args.runs if runs > 1 else 1)
                for fault, service, runs in plan(wiring, quick)
                if not args.only or any(text in fault for text in args.only)
            ]
            wiring_rows, rate = run_wiring(engine, wiring, Path(directory) / CONFIGS[wiring], steps)
            rows += wiring_rows
            rates.append(rate)
    took = f" The whole run took {(time.monotonic() - began) / 60:.1f} min."
    report = f"{setting(engine, rates, load_average)}{took}\n\n{table(rows)}\n"
    print(f"\n{report}")
    if not partial:
        RESULTS.write_text(f"# Fault recovery\n\n`.venv/bin/python -m tests.bench.faults`: {report}")
        print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
