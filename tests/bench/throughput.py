"""Benchmark: PUB -> SUB messages per second and latency, raw pyzmq vs our direct path vs our broker path.

    .venv/bin/python tests/bench/throughput.py [--quick]

For 100 B and 1 KiB messages, on loopback (processes on this host) and across containers (one per role on
a compose-style bridge network), in one run:
  raw     pyzmq XPUB -> SUB with a bare [topic, payload] message: the ceiling
  direct  our Publisher -> our subscribe(): envelope encode, decode, body validation, duplicate check
  broker  the same through our broker (XSUB/XPUB poller loop with last values)
Throughput: the publisher sends as fast as it can (default high-water marks, so PUB may drop); the
rate is what the subscriber receives per second, the median of --repeat runs. Latency: a paced run at
1,000 msg/s, from publish to the subscriber's handler.
Writes tests/bench/results/throughput.md and throughput.png. A report: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec
import zmq

# The repo's services/ when run from a checkout (in the image they are on PYTHONPATH already).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "services"))

from smarthome.core.config import BrokerConfig, Config, Publish, Subscribe
from smarthome.core.envelope import Message
from smarthome.core.identity import Identity
from smarthome.core.runtime import Loop
from smarthome.roles import broker

TOPIC = "bench"
PORTS = {"pub": 5701, "broker-in": 5702, "broker-out": 5703}
IDLE_END = 1.0  # seconds without a message after which a subscriber reports
LATENCY_RATE = 1000  # msg/s in the paced latency run
RESULTS = Path(__file__).resolve().parent / "results"


class Pad(msgspec.Struct):
    pad: str


def bench_config(name: str, spec: object) -> Config:
    return Config("bench", max_message_bytes=1 << 20, heartbeat_interval=1.0, services={name: spec})


# --- roles (each runs in its own process or container) -------------------------------------------------


def role_pub(mode: str, endpoint: str, count: int, size: int, paced: bool) -> None:
    """Wait for a subscriber, then send `count` messages of about `size` bytes."""
    interval = 1 / LATENCY_RATE if paced else 0.0
    if mode == "raw":
        context = zmq.Context()
        sock = context.socket(zmq.XPUB)
        sock.linger = 10_000
        sock.bind(endpoint)
        sock.recv()  # the subscription: now nothing is lost to the slow joiner
        padding = b"x" * max(0, size - 8)
        started = time.perf_counter()
        for i in range(count):
            sock.send_multipart([b"bench", struct.pack("d", time.time()) + padding])
            if interval:
                _pace(started, i, interval)
        context.destroy()
        return
    service = Loop(Identity("bench-pub", bench_config("bench-pub", None)))
    side = {"connect": endpoint} if mode == "broker" else {"bind": endpoint}
    body = {"pad": "x" * max(0, size - 90)}  # the envelope's own fields take ~90 bytes of JSON

    def blast() -> None:
        started = time.perf_counter()
        for i in range(count):
            publisher.publish(body)
            if interval:
                _pace(started, i, interval)
        service.stop()

    publisher = service.publisher(Publish(TOPIC, **side), on_listener=lambda: service.call_later(0, blast))
    publisher.sock.linger = 10_000  # flush what is queued before exiting
    service.run()


def _pace(started: float, i: int, interval: float) -> None:
    ahead = started + (i + 1) * interval - time.perf_counter()
    if ahead > 0:
        time.sleep(ahead)  # ok: pacing the latency run's publisher, not synchronisation


def role_sub(mode: str, endpoint: str, count: int) -> None:
    """Receive until `count` messages or IDLE_END seconds of silence; print a JSON result line."""
    arrivals: list[float] = []
    latencies: list[float] = []
    if mode == "raw":
        context = zmq.Context()
        sock = context.socket(zmq.SUB)
        sock.subscribe(b"bench")
        sock.connect(endpoint)
        while len(arrivals) < count:
            try:
                _, payload = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:  # poll only when the queue is empty, as our runtime's drain does
                if not sock.poll(IDLE_END * 1000 if arrivals else 30_000):
                    break
                continue
            arrivals.append(time.perf_counter())
            latencies.append(time.time() - struct.unpack("d", payload[:8])[0])
        context.destroy(linger=0)
    else:
        service = Loop(Identity("bench-sub", bench_config("bench-sub", None)))

        def on_message(message: Message, _: Pad) -> None:
            arrivals.append(time.perf_counter())
            latencies.append(time.time() - message.ts)
            if len(arrivals) == count:
                service.stop()

        def check_idle() -> None:
            if arrivals and time.perf_counter() - arrivals[-1] > IDLE_END:
                service.stop()

        service.subscribe(Subscribe([TOPIC], connect=[endpoint]), Pad, on_message)
        service.every(0.25, check_idle)
        service.call_later(60, service.stop)
        service.run()
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    latencies.sort()
    print(
        json.dumps(
            {
                "received": len(arrivals),
                "rate": (len(arrivals) - 1) / span,
                "p50_us": latencies[len(latencies) // 2] * 1e6,
                "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
            }
        ),
        flush=True,
    )


def role_broker(bind_in: str, bind_out: str) -> None:
    spec = BrokerConfig("BROKER", bind_in, bind_out)
    broker.main(Identity("bench-broker", bench_config("bench-broker", spec)), spec)


# --- orchestration ---------------------------------------------------------------------------------------


class Loopback:
    """Every role a local process; endpoints on 127.0.0.1."""

    name = "loopback"

    def endpoints(self, mode: str) -> tuple[str, str]:
        if mode == "broker":
            return f"tcp://127.0.0.1:{PORTS['broker-in']}", f"tcp://127.0.0.1:{PORTS['broker-out']}"
        return f"tcp://127.0.0.1:{PORTS['pub']}", f"tcp://127.0.0.1:{PORTS['pub']}"

    def start(self, role: str, *args: str) -> subprocess.Popen[str]:
        command = [sys.executable, __file__, role, *args]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # errors show on stderr

    def result(self, process: subprocess.Popen[str]) -> dict:
        return json.loads(process.communicate(timeout=120)[0].strip().splitlines()[-1])

    def stop(self, processes: list[subprocess.Popen[str]]) -> None:
        for process in processes:
            process.kill()
            process.wait()

    def close(self) -> None:
        pass


class Containers(Loopback):
    """Every role its own container from the project's image, on a private bridge network."""

    name = "containers"

    def __init__(self) -> None:
        import docker

        self.client = docker.from_env()
        self.network = self.client.networks.create(f"smarthome-bench-{uuid.uuid4().hex[:6]}")

    def endpoints(self, mode: str) -> tuple[str, str]:
        if mode == "broker":
            return f"tcp://broker:{PORTS['broker-in']}", f"tcp://broker:{PORTS['broker-out']}"
        return f"tcp://*:{PORTS['pub']}", f"tcp://pub:{PORTS['pub']}"

    def start(self, role: str, *args: str):
        container = self.client.containers.create(
            "smarthome:latest",
            entrypoint=["python", "/bench/throughput.py", role, *args],
            volumes={str(Path(__file__).resolve().parent): {"bind": "/bench", "mode": "ro"}},
            detach=True,
        )
        self.network.connect(container, aliases=[role])
        container.start()
        return container

    def result(self, container) -> dict:
        container.wait(timeout=120)
        return json.loads(container.logs(stderr=False).decode().strip().splitlines()[-1])

    def stop(self, containers: list) -> None:
        for container in containers:
            container.remove(force=True)

    def close(self) -> None:
        self.network.remove()


def measure(where: Loopback, mode: str, size: int, count: int, paced: bool) -> dict:
    pub_endpoint, sub_endpoint = where.endpoints(mode)
    started = []
    if mode == "broker":
        started.append(where.start("broker", f"tcp://*:{PORTS['broker-in']}", f"tcp://*:{PORTS['broker-out']}"))
    sub = where.start("sub", mode, sub_endpoint, str(count))
    started.append(where.start("pub", mode, pub_endpoint, str(count), str(size), "paced" if paced else "fast"))
    try:
        return where.result(sub)
    finally:
        where.stop([*started, sub])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("pub", "sub", "broker"):
        role, *args = sys.argv[1:]
        if role == "pub":
            role_pub(args[0], args[1], int(args[2]), int(args[3]), args[4] == "paced")
        elif role == "sub":
            role_sub(args[0], args[1], int(args[2]))
        else:
            role_broker(args[0], args[1])
        return

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages, loopback only")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per cell; the median is reported")
    options = parser.parse_args()
    count = 50_000 if options.quick else 200_000
    rows = []
    places = [Loopback()] if options.quick else [Loopback(), Containers()]
    try:
        for where in places:
            for size in (100, 1024):
                for mode in ("raw", "direct", "broker"):
                    runs = [measure(where, mode, size, count, paced=False) for _ in range(options.repeat)]
                    fast = sorted(runs, key=lambda run: run["rate"])[len(runs) // 2]  # the median run
                    paced = measure(where, mode, size, 2 * LATENCY_RATE, paced=True)
                    rows.append(
                        {
                            "where": where.name,
                            "size": size,
                            "mode": mode,
                            **fast,
                            "p50_us": paced["p50_us"],
                            "p99_us": paced["p99_us"],
                            "sent": count,
                        }
                    )
                    print(
                        f"{where.name:10} {size:5} B {mode:6} {fast['rate']:>10,.0f} msg/s "
                        f"p50 {paced['p50_us']:.0f} us p99 {paced['p99_us']:.0f} us",
                        flush=True,
                    )
    finally:
        for where in places:
            where.close()
    report(rows)


def report(rows: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    raw = {(r["where"], r["size"]): r["rate"] for r in rows if r["mode"] == "raw"}
    lines = [
        "| where | size | path | msg/s | x raw | received | p50 latency | p99 latency |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["rate"] / raw[r["where"], r["size"]]
        lines.append(
            f"| {r['where']} | {r['size']} B | {r['mode']} | {r['rate']:,.0f} | {ratio:.2f} | "
            f"{r['received'] / r['sent']:.0%} | {r['p50_us']:.0f} µs | {r['p99_us']:.0f} µs |"
        )
    (RESULTS / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["where"], r["size"]) for r in rows})
    modes = ["raw", "direct", "broker"]
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.25
    for i, mode in enumerate(modes):
        rates = [next(r["rate"] for r in rows if (r["where"], r["size"]) == g and r["mode"] == mode) for g in groups]
        axis.bar([x + i * width for x in range(len(groups))], [rate / 1000 for rate in rates], width, label=mode)
    axis.set_xticks([x + width for x in range(len(groups))], [f"{w}\n{s} B" for w, s in groups])
    axis.set_ylabel("thousand messages / s")
    axis.set_title("PUB -> SUB throughput, same machine, same run")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "throughput.png", dpi=100)


if __name__ == "__main__":
    main()
