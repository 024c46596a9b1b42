"""What CurveZMQ costs: our own publisher and subscriber (Outbox and Subscriber through the socket factory, each in
its own process) with `curve` off and on, interleaved in the same run; the ratio is the cost of encryption.

    .venv/bin/python -m tests.bench.curve [--messages 100000] [--runs 3]

The publisher waits for the subscriber, then sends as fast as back-pressure lets it (XPUB_NODROP); the rate is
what the subscriber got, and the share it got is reported beside it. Loopback only; a report, never an assertion.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
import zmq
from smarthome.core.config import Config, LightSwitchConfig, Publish, Subscribe, Zmtp
from smarthome.core.identity import Identity
from smarthome.core.protocol import Kind
from smarthome.core.runtime import Loop

RESULTS = Path(__file__).resolve().parent / "results"


class Pad(msgspec.Struct):
    pad: str


def config(curve: bool, endpoint: str) -> Config:
    publisher = LightSwitchConfig("PUB", Publish("bench", bind=endpoint), toggle_period=0)
    zmtp = Zmtp(heartbeat_ivl=1, heartbeat_timeout=10, heartbeat_ttl=10)
    return Config(1 << 20, 3600, 3, zmtp, {"bench": Kind.STATE}, {"bench-pub": publisher}, curve, path="bench")


def publish(curve: bool, endpoint: str, count: int, size: int) -> None:
    loop = Loop(Identity("bench-pub", config(curve, endpoint)))
    body = {"pad": "x" * max(0, size - 90)}  # the envelope's own fields take ~90 bytes of JSON

    def blast() -> None:
        for _ in range(count):
            publisher.publish(body)
        loop.stop()

    publisher = loop.publisher(Publish("bench", bind=endpoint), on_listener=lambda: loop.call_later(0, blast))
    publisher.sock.xpub_nodrop = True  # back-pressure instead of drops: every message is delivered
    publisher.sock.linger = 60_000
    loop.run()


def subscribe(curve: bool, endpoint: str, count: int, result: multiprocessing.Queue) -> None:
    loop = Loop(Identity("bench-sub", config(curve, endpoint)))
    arrivals: list[float] = []

    def heard(*_: object) -> None:
        arrivals.append(time.perf_counter())
        if len(arrivals) == count:
            loop.stop()

    loop.subscribe(Subscribe(["bench"], connect=[endpoint]), Pad, heard)
    loop.call_later(120, loop.stop)
    loop.run()
    result.put((len(arrivals), (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])))


def once(curve: bool, count: int, size: int) -> tuple[float, float]:
    with zmq.Context() as probe, probe.socket(zmq.PUB) as sock:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    result: multiprocessing.Queue = multiprocessing.Queue()
    sub = multiprocessing.Process(target=subscribe, args=(curve, endpoint, count, result))
    pub = multiprocessing.Process(target=publish, args=(curve, endpoint, count, size))
    sub.start()
    pub.start()
    received, rate = result.get(timeout=180)
    pub.join(60)
    sub.join(60)
    return rate, received / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ["SMARTHOME_KEYS"] = tempfile.mkdtemp(prefix="smarthome-bench-keys-")
    rows = []
    for size in (100, 1024):
        rates: dict[bool, list[float]] = {False: [], True: []}
        shares: dict[bool, list[float]] = {False: [], True: []}
        loads = []
        for _ in range(args.runs):  # interleaved: a slow spell hits both alike
            for curve in (False, True):
                rate, share = once(curve, args.messages, size)
                rates[curve].append(rate)
                shares[curve].append(share)
                loads.append(os.getloadavg()[0])
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        got = min(shares[False] + shares[True])
        cells = [f"{size} B", f"{off:,.0f}", f"{on:,.0f}", f"{on / off:.2f}", f"{1 - on / off:.0%}", f"{got:.0%}"]
        rows.append("| " + " | ".join([*cells, f"{max(loads):.1f}"]) + " |")
        print(rows[-1], flush=True)
    report = "\n".join(
        [
            f"# CurveZMQ cost, {time.strftime('%Y-%m-%d')}",
            "",
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
            f" pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}; {args.messages:,} messages per run,"
            f" median of {args.runs}, interleaved.",
            "",
            "| size | curve off msg/s | curve on msg/s | on / off | cost | least received | max load (1 min) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "curve.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
