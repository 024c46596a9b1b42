"""Benchmark: lossless throughput, overload drain rate and latency on loopback: ours vs raw, zmq.proxy, Mosquitto.

    .venv/bin/python -m tests.bench.throughput [--fan 1|4] [--quick]

One process per publisher and subscriber (tests/bench/workers.py), 100 B and 1 KiB messages. Paths:
  raw              the fastest pyzmq we can write: PUB -> SUB, one frame, plain send/recv (1 -> 1 only)
  raw 2 frames     the same with the topic in a frame of its own, as ours sends it; read with two recv()
                   and no check (a message of other frames would be misread): what two frames cost
  direct           our Publisher -> our subscribe(): envelope, body validation, duplicate check (1 -> 1 only)
  zmq.proxy        our messages through zmq.proxy(XSUB, XPUB): the ceiling for any broker
  broker           our messages through our broker (`python -m smarthome run broker`)
  mosquitto q0/q1  paho-mqtt carrying the same envelope JSON through Mosquitto, QoS 0 and 1; "nodelay":
                   TCP_NODELAY on both sides (paho's sockets and Mosquitto's `set_tcp_nodelay`)
--fan 4: four publishers and four subscribers on one topic through each broker (N to N; rates are the
aggregate delivered to all subscribers).

For every case, each repetition a fresh set of processes, cases and repetitions interleaved:
  drain     publishers send flat out for DRAIN_SECONDS; what the subscribers get per second, and the share
            of messages that arrived. ZeroMQ's PUB drops at its high-water mark; paho blocks (TCP back-pressure).
  lossless  the highest paced rate at which every message arrived (per-sender seq gaps) and subscribers kept
            up: a geometric bisection between drain/2 and drain*1.5 (±~7%), PROBE_SECONDS per probe; a rate
            passes if one of TRIES probes at it loses nothing.
  latency   publish (send time in the message) to the subscriber's handler, at min(LATENCY_RATE, half the
            lossless rate); p50/p99 pooled over the repetitions (>= 20,000 samples).
Medians of --repeat (3). Writes tests/bench/results/throughput-1x1.md (or -4x4) and .png. Nothing is asserted.
Needs Debian's mosquitto (`apt-get install mosquitto`) and the bench extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.bench.benchlib import (
    ROOT,
    bar_chart,
    free_port,
    header,
    load,
    median,
    mosquitto_version,
    percentile,
    table,
    versions,
    wait_for_port,
    write,
)

WORKERS = str(Path(__file__).resolve().parent / "workers.py")
DRAIN_SECONDS = 1.0
PROBE_SECONDS = 0.6
# A rate passes if one of TRIES probes loses nothing: on a shared machine one stall of another process can fail a
# probe at any rate, and a single failed probe at drain/2 would halve the figure (seen: raw at 94k in one run).
TRIES = 2
STEPS = 4  # bisection steps between drain/2 and drain*1.5: 3 ** (1 / 2**4), ~7% apart (~4.4% below drain/2)
LATENCY_RATE = 5000  # msg/s published, at most
LATENCY_SAMPLES = 7000  # per repetition, so >= 20,000 over three
KEEP_UP = 0.9  # a probe passes if nothing is lost and subscribers got >= 90% of the paced rate
SIZES = (100, 1024)
CASES = {
    1: ["raw", "raw 2 frames", "direct", "zmq.proxy", "broker", "mosquitto q0", "mosquitto q0 nodelay", "mosquitto q1",
        "mosquitto q1 nodelay"],
    4: ["zmq.proxy", "broker", "mosquitto q0", "mosquitto q0 nodelay", "mosquitto q1", "mosquitto q1 nodelay"],
}  # fmt: skip


class Brokers:
    """zmq.proxy, our broker and two Mosquittos (default, nodelay), each on free loopback ports; stopped on exit."""

    def __init__(self, stack: ExitStack, directory: Path) -> None:
        self.directory = directory
        self.endpoints: dict[str, tuple[str, str]] = {}  # broker -> (publishers connect here, subscribers here)
        xsub, xpub = free_port(), free_port()
        self._start(stack, [sys.executable, WORKERS, "proxy", f"tcp://127.0.0.1:{xsub}", f"tcp://127.0.0.1:{xpub}"])
        self.endpoints["zmq.proxy"] = (f"tcp://127.0.0.1:{xsub}", f"tcp://127.0.0.1:{xpub}")
        self._ours(stack)
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(mosquitto).exists():
            sys.exit("Mosquitto is missing: apt-get install mosquitto (Debian's package; the benchmark starts it)")
        for name, nodelay in (("mosquitto", False), ("mosquitto nodelay", True)):
            port = free_port()
            config = directory / f"{name.replace(' ', '-')}.conf"
            lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_dest stderr"]
            config.write_text("\n".join(lines + (["set_tcp_nodelay true"] if nodelay else [])) + "\n")
            self._start(stack, [mosquitto, "-c", str(config)], log=directory / f"{name}.log")
            wait_for_port(port)
            self.endpoints[name] = (f"127.0.0.1:{port}",) * 2

    def _ours(self, stack: ExitStack) -> None:
        xsub, xpub = free_port(), free_port()
        config = {
            "max_message_bytes": 65536,
            "heartbeat_interval": 1,
            "offline_after": 3,
            "zmtp": {"heartbeat_ivl": 1, "heartbeat_timeout": 10, "heartbeat_ttl": 10},
            "curve": False,  # like the raw, proxy and Mosquitto rows; tests/bench/curve.py measures what it costs
            "services": {
                "broker": {
                    "role": "broker",
                    "name": "BROKER",
                    "publishers": f"tcp://*:{xsub}",
                    "subscribers": f"tcp://*:{xpub}",
                }
            },
        }
        path = self.directory / "broker.yml"
        path.write_text(yaml.safe_dump(config))
        env = {
            **os.environ,
            "SMARTHOME_CONFIG": str(path),
            "SMARTHOME_LOOPBACK": "1",
            "SMARTHOME_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT / "services"),
        }
        self._start(stack, [sys.executable, "-m", "smarthome", "run", "broker"], env=env)
        wait_for_port(xsub)
        self.endpoints["broker"] = (f"tcp://127.0.0.1:{xsub}", f"tcp://127.0.0.1:{xpub}")

    def _start(self, stack: ExitStack, command: list[str], env: dict | None = None, log: Path | None = None) -> None:
        output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(command, env=env, stdout=output, stderr=output)

        def stop() -> None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if log:
                output.close()

        stack.callback(stop)


class Worker:
    """One publisher or subscriber process of workers.py, driven by JSON lines."""

    def __init__(self, role: str, transport: str, options: dict) -> None:
        command = [sys.executable, WORKERS, role, transport, json.dumps(options)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.sender = ""

    def ask(self, command: dict) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout: float = 120) -> dict:
        if not select.select([self.process.stdout], [], [], timeout)[0]:
            raise TimeoutError(f"no answer from {self.process.args[2:4]} within {timeout}s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.process.args[2:4]} exited with {self.process.wait()}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Case:
    name: str
    size: int
    fan: int

    def transport(self) -> str:
        return {"raw": "raw", "raw 2 frames": "raw", "direct": "ours", "zmq.proxy": "ours", "broker": "ours"}.get(
            self.name, "mqtt"
        )

    def options(self, brokers: Brokers, topic: str) -> tuple[dict, dict]:
        """The publishers' and the subscribers' options."""
        common = {"topic": topic, "size": self.size}
        if self.name in ("raw", "raw 2 frames", "direct"):
            port = free_port()
            common |= {"endpoint": f"tcp://127.0.0.1:{port}", "frames": 2 if self.name == "raw 2 frames" else 1}
            return {**common, "bind": True}, common
        if self.transport() == "ours":
            into, out = brokers.endpoints[self.name]
            return {**common, "endpoint": into, "bind": False}, {**common, "endpoint": out}
        nodelay = self.name.endswith("nodelay")
        mqtt = {**common, "qos": int(self.name.split()[1][1]), "nodelay": nodelay}
        endpoint = brokers.endpoints["mosquitto nodelay" if nodelay else "mosquitto"][0]
        return {**mqtt, "endpoint": endpoint}, {**mqtt, "endpoint": endpoint}


class Session:
    """One repetition of one case: fresh publisher and subscriber processes, warmed up until all hear all."""

    def __init__(self, case: Case, brokers: Brokers) -> None:
        self.case = case
        pub_options, sub_options = case.options(brokers, f"b{uuid.uuid4().hex[:10]}")
        self.subs = [Worker("sub", case.transport(), {**sub_options, "index": i}) for i in range(case.fan)]
        self.pubs = [Worker("pub", case.transport(), {**pub_options, "index": i}) for i in range(case.fan)]
        self._warm_up()

    def _warm_up(self, deadline: float = 30.0) -> None:
        """Publish single messages until every subscriber has heard every publisher (no slow joiners left)."""
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            for pub in self.pubs:
                pub.ask({"cmd": "warm"})
                pub.sender = pub.answer()["sender"]
            time.sleep(0.05)  # ok: let the warm-up messages arrive before asking who heard them
            heard = []
            for sub in self.subs:
                sub.ask({"cmd": "seen"})
                heard.append(set(sub.answer()["senders"]))
            if all(h >= {pub.sender for pub in self.pubs} for h in heard):
                return
        raise TimeoutError(f"{self.case}: subscribers did not hear every publisher within {deadline}s")

    def probe(self, rate: float, seconds: float, latency: bool = False) -> dict:
        """Publishers send at `rate` msg/s in all (0: flat out); what the subscribers got."""
        for pub in self.pubs:
            pub.ask({"cmd": "send", "rate": rate / len(self.pubs), "seconds": seconds})
        expect = {}
        for pub in self.pubs:
            sent = pub.answer()
            expect[pub.sender] = [sent["first"], sent["last"]]
        for sub in self.subs:
            sub.ask({"cmd": "collect", "expect": expect, "latency": latency})
        answers = [sub.answer() for sub in self.subs]
        received = sum(a["received"] for a in answers)
        span = max(a["end"] for a in answers) - min(a["start"] for a in answers if a["start"])
        return {
            "received": received,
            "expected": sum(a["expected"] for a in answers),
            "rate": received / span if span > 0 else 0.0,
            "latencies": [s for a in answers for s in a["latencies"]],
        }

    def passes(self, rate: float) -> tuple[bool, float]:
        """Whether `rate` is delivered whole, in one of TRIES probes; and the rate the subscribers got."""
        for _ in range(TRIES):
            got = self.probe(rate, PROBE_SECONDS)
            if got["received"] == got["expected"] and got["rate"] >= KEEP_UP * rate * self.case.fan:
                return True, got["rate"]
        return False, got["rate"]

    def measure(self) -> dict:
        drain = self.probe(0, DRAIN_SECONDS)
        hi = 1.5 * drain["rate"] / self.case.fan  # in published msg/s (each subscriber gets them all)
        lo = hi / 3
        ok, delivered = self.passes(lo)
        while not ok and lo > 10:  # even drain/2 loses: halve until a rate passes
            hi, lo = lo, lo / 2
            ok, delivered = self.passes(lo)
        best = delivered if ok else 0.0
        for _ in range(STEPS):
            middle = math.sqrt(lo * hi)
            ok, delivered = self.passes(middle)
            if ok:
                lo, best = middle, delivered
            else:
                hi = middle
        rate = min(LATENCY_RATE, lo / 2)
        seconds = min(5.0, max(1.0, LATENCY_SAMPLES / (rate * self.case.fan)))
        latencies = self.probe(rate, seconds, latency=True)
        return {
            "drain": drain["rate"],
            "drain_received": drain["received"] / drain["expected"],
            "lossless": best,
            "latency_rate": rate,
            "latencies": latencies["latencies"],
            "latency_lost": latencies["expected"] - latencies["received"],
        }

    def close(self) -> None:
        for worker in self.pubs + self.subs:
            worker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fan", type=int, choices=(1, 4), default=1, help="publishers and subscribers (N to N)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per case; medians are reported")
    parser.add_argument("--quick", action="store_true", help="one repetition, 100 B only: a smoke run")
    parser.add_argument("--only", action="append", metavar="PATH", help="measure only this path (repeatable)")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so every process started is stopped too
    repeat, sizes = (1, SIZES[:1]) if options.quick else (options.repeat, SIZES)
    top = header(
        f"Throughput and latency on loopback, {options.fan} -> {options.fan}",
        " ".join(["python -m tests.bench.throughput", *sys.argv[1:]]),
        {**versions("paho-mqtt"), "Mosquitto": mosquitto_version()},
    )
    names = [name for name in CASES[options.fan] if not options.only or name in options.only]
    cases = [Case(name, size, options.fan) for size in sizes for name in names]
    runs: dict[tuple[str, int], list[dict]] = {(c.name, c.size): [] for c in cases}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory, ExitStack() as stack:
        brokers = Brokers(stack, Path(directory))
        for rep in range(repeat):
            for case in cases:  # interleaved: a slow period hits every case alike
                before = load()
                session = Session(case, brokers)
                try:
                    result = session.measure()
                finally:
                    session.close()
                result["load"] = [before, load()]
                runs[case.name, case.size].append(result)
                print(
                    f"[{time.monotonic() - started:5.0f}s] rep {rep + 1} {case.size:5} B {case.name:22} "
                    f"lossless {result['lossless']:>9,.0f}  drain {result['drain']:>9,.0f} "
                    f"({result['drain_received']:.0%} arrived)  load {before:.2f}",
                    file=sys.stderr,
                )
    report(top, options.fan, cases, runs)


def report(top: str, fan: int, cases: list[Case], runs: dict[tuple[str, int], list[dict]]) -> None:
    cells = {}
    for key, results in runs.items():
        ms = [s * 1e3 for r in results for s in r["latencies"]]
        cells[key] = {
            "lossless": median([r["lossless"] for r in results]),
            "drain": median([r["drain"] for r in results]),
            "arrived": median([r["drain_received"] for r in results]),
            "p50": percentile(ms, 50) if ms else float("nan"),
            "p99": percentile(ms, 99) if ms else float("nan"),
            "samples": len(ms),
            "latency_rate": median([r["latency_rate"] for r in results]),
            "latency_lost": sum(r["latency_lost"] for r in results),
            "load": [x for r in results for x in r["load"]],
        }
    # Ratios to the ceiling of this topology: raw pyzmq (1 -> 1), zmq.proxy (any broker).
    bases = ["raw", "zmq.proxy"] if fan == 1 else ["zmq.proxy"]
    rows = []
    for case in cases:
        c = cells[case.name, case.size]
        rows.append(
            [
                f"{case.size} B",
                case.name,
                f"**{c['lossless']:,.0f}**",
                *(ratio(cells, (case.name, case.size), (base, case.size)) for base in bases),
                f"{c['drain']:,.0f}",
                f"{c['arrived']:.0%}",
                f"{c['p50']:.2f} ms",
                f"{c['p99']:.2f} ms",
                f"{c['samples']:,} at {c['latency_rate']:,.0f}/s"
                + (f", {c['latency_lost']} lost" if c["latency_lost"] else ""),
                f"{min(c['load']):.2f}-{max(c['load']):.2f}",
            ]
        )
    reps = len(next(iter(runs.values())))
    goals = goals_table(cells, fan)
    text = (
        top + f"- method: {reps} repetitions per case, interleaved; medians; latency percentiles pooled over the "
        f"repetitions; drain: {DRAIN_SECONDS:g} s flat out; lossless: paced probes of {PROBE_SECONDS:g} s, "
        f"{STEPS}-step geometric bisection, a rate passing if one of {TRIES} probes at it loses nothing\n\n"
        "**lossless** = the highest paced rate delivered with no message lost (per-sender seq gaps) while "
        "subscribers kept up; **drain** = what subscribers got per second while publishers sent flat out "
        "(an overload: ZeroMQ's PUB drops at its high-water mark, so **arrived** < 100%; paho's publisher blocks "
        "instead, and Mosquitto drops what it cannot queue for a subscriber that falls behind). "
        + ("Rates are messages delivered per second to all four subscribers together. " if fan > 1 else "")
        + "Ratios are of lossless rates in this run.\n\n"
        + table(
            [
                "size",
                "path",
                "lossless msg/s",
                *(f"x {base}" for base in bases),
                "drain msg/s",
                "arrived",
                "p50",
                "p99",
                "latency samples",
                "load",
            ],
            rows,
            right=set(range(2, 10 + len(bases))),
        )
        + goals
    )
    name = f"throughput-{fan}x{fan}"
    write(name, text)
    groups = sorted({f"{c.size} B" for c in cases}, key=lambda g: int(g.split()[0]))
    series = {
        label: [cells[label, int(g.split()[0])]["lossless"] / 1000 for g in groups]
        for label in dict.fromkeys(c.name for c in cases)
    }
    bar_chart(name, f"Lossless rate, {fan} -> {fan}, loopback, same run", "thousand msg/s", groups, series)


def ratio(cells: dict, key: tuple[str, int], base: tuple[str, int]) -> str:
    """The lossless rate of `key` over that of `base`, if both were measured."""
    if base not in cells or not cells[base]["lossless"]:
        return "n/a"
    return f"{cells[key]['lossless'] / cells[base]['lossless']:.2f}"


def goals_table(cells: dict, fan: int) -> str:
    """The issue's goals at 100 B, from this run's lossless rates."""
    goals = [
        ("broker / zmq.proxy", "broker", "zmq.proxy", ">= 0.60"),
        ("broker / Mosquitto q0", "broker", "mosquitto q0", ">= 3"),
    ]
    if fan == 1:
        goals.insert(0, ("direct / raw", "direct", "raw", ">= 0.85"))
        goals.insert(1, ("direct / raw 2 frames", "direct", "raw 2 frames", "none: what the envelope and checks cost"))
    rows = [[what, ratio(cells, (a, 100), (b, 100)), goal] for what, a, b, goal in goals if (a, 100) in cells]
    if not rows:
        return ""
    return "\nAt 100 B:\n\n" + table(["lossless ratio", "measured", "goal"], rows, right={1})


if __name__ == "__main__":
    main()
