"""Benchmark: publish-to-browser latency through the WebSocket forwarder, and the rate it sustains.

    .venv/bin/python -m tests.bench.websocket

Runs the real forwarder (`smarthome run web`, loopback) fed by a publisher in this process, with
aiohttp WebSocket clients in this process. In one run:
  latency  p50/p99 from publish to a browser's receipt at 200 msg/s, with 1 and with 50 clients;
           baseline: a plain zmq SUB on the same publisher, same run (what the forwarder adds)
  rate     the highest publish rate (doubling from 500 msg/s) that 10 reading clients get in full
           without any being dropped
A report: nothing is asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
import zmq
import zmq.asyncio
from smarthome.core.envelope import Message, encode
from smarthome.web.guard import TOKEN_COOKIE

from tests.bench.benchlib import free_port, wait_for_port  # this directory: the benchmarks' shared code

ROOT = Path(__file__).resolve().parents[2]

LATENCY_RATE = 200  # msg/s
LATENCY_SECONDS = 5
RATE_SECONDS = 3
OPEN_WITHIN = 30  # seconds for every client to connect: a benchmark never waits without a bound
TOKEN = "the-benchmark-s-own-dashboard-token"


def start_forwarder(directory: Path, feed: int, http: int, queue: int) -> subprocess.Popen[bytes]:
    commands = free_port()
    config = {
        "max_message_bytes": 65536,
        "heartbeat_interval": 1,
        "offline_after": 3,
        "zmtp": {"heartbeat_ivl": 0.5, "heartbeat_timeout": 1.5, "heartbeat_ttl": 1.5},
        "curve": False,  # like the baseline SUB; tests/bench/curve.py measures what CurveZMQ costs
        "topics": {"toast": "state", "light-set": "command"},
        "services": {
            "feed": {  # the benchmark's own publisher (Feed), declared because the web's endpoints must name
                "role": "light-switch",  # who binds them; it is never run
                "name": "FEED",
                "publish": {"topic": "toast", "bind": f"tcp://*:{feed}"},
                "toggle_period": 0,
                "commands": {"topics": ["light-set"], "bind": f"tcp://127.0.0.1:{commands}"},
            },
            "web": {
                "role": "web",
                "name": "WEB",
                "port": http,
                "client_queue": queue,
                "max_browsers": 64,  # the latency run opens 50...
                "browsers_per_address": 64,  # ...all from 127.0.0.1
                "access_token_file": str(directory / "token"),
                "subscribe": {"topics": [], "connect": [f"tcp://127.0.0.1:{feed}"]},
                "commands": {"topic": "light-set", "connect": f"tcp://127.0.0.1:{commands}"},
            },
        },
    }
    (directory / "token").write_text(TOKEN)
    path = directory / "bench.yml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "SMARTHOME_CONFIG": str(path), "SMARTHOME_LOOPBACK": "1", "PYTHONPATH": str(ROOT / "services")}
    return subprocess.Popen([sys.executable, "-m", "smarthome", "run", "web"], env=env, stderr=subprocess.PIPE)


class Feed:
    """The publisher: an XPUB the forwarder (and the baseline SUB) connect to."""

    def __init__(self, context: zmq.asyncio.Context, port: int) -> None:
        self.sock = context.socket(zmq.XPUB)
        self.sock.sndhwm = 0
        self.sock.bind(f"tcp://127.0.0.1:{port}")
        self.seq = 0

    async def run(self, rate: float, seconds: float) -> int:
        started = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            self.seq += 1
            message = Message("toast", "feed@bench", 1, self.seq, time.time(), {"state": "ON"})  # as a light switch
            await self.sock.send_multipart(encode(message))
            ahead = started + (i + 1) / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)  # ok: pacing the benchmark publisher, not synchronisation
        return total


async def browser_latencies(
    session: aiohttp.ClientSession,
    url: str,
    latencies: list[float],
    stop: asyncio.Event,
    opened: asyncio.Event | None = None,
) -> bool:
    """Collect receipt latencies until `stop`; False if the forwarder closed this client (dropped)."""
    page = {"Origin": url.removesuffix("/ws"), "Cookie": f"{TOKEN_COOKIE}={TOKEN}"}  # as the dashboard's page
    async with session.ws_connect(url, headers=page) as ws:
        if opened:
            opened.set()
        while not stop.is_set():
            try:
                frame = await asyncio.wait_for(ws.receive(), 0.2)
            except TimeoutError:
                continue
            if frame.type != aiohttp.WSMsgType.TEXT:
                return False
            event = json.loads(frame.data)
            if event["topic"] == "toast":
                latencies.append(time.time() - event["ts"])
    return True


async def baseline_latencies(
    context: zmq.asyncio.Context, port: int, latencies: list[float], stop: asyncio.Event, opened: asyncio.Event
) -> None:
    sub = context.socket(zmq.SUB)
    sub.subscribe(b"toast")
    sub.connect(f"tcp://127.0.0.1:{port}")
    opened.set()
    while not stop.is_set():
        if await sub.poll(200):
            _, body = await sub.recv_multipart()
            latencies.append(time.time() - json.loads(body)["ts"])
    sub.close(linger=0)


def percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return values[len(values) // 2] * 1e3, values[int(len(values) * 0.99)] * 1e3


async def measure_latency(feed: Feed, context: zmq.asyncio.Context, port: int, url: str, clients: int) -> dict:
    per_client: list[list[float]] = [[] for _ in range(clients)]
    baseline: list[float] = []
    stop = asyncio.Event()
    opened = [asyncio.Event() for _ in range(clients + 1)]
    async with aiohttp.ClientSession() as session:
        tasks = [
            asyncio.create_task(browser_latencies(session, url, per_client[i], stop, opened[i])) for i in range(clients)
        ]
        tasks.append(asyncio.create_task(baseline_latencies(context, port, baseline, stop, opened[-1])))
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in opened)), OPEN_WITHIN)
        await asyncio.sleep(0.5)  # ok: let the baseline SUB's subscription land before timing starts
        sent = await feed.run(LATENCY_RATE, LATENCY_SECONDS)
        await asyncio.sleep(0.5)  # ok: drain the tail
        stop.set()
        await asyncio.gather(*tasks)
    browser = [latency for client in per_client for latency in client]
    return {
        "clients": clients,
        "sent": sent,
        "received": len(browser) / clients,
        "p50": percentiles(browser)[0],
        "p99": percentiles(browser)[1],
        "base_p50": percentiles(baseline)[0],
        "base_p99": percentiles(baseline)[1],
    }


async def sustained_rate(feed: Feed, url: str, clients: int = 10) -> list[tuple[float, int, bool]]:
    results = []
    rate = 500.0
    while rate <= 64_000:
        counts = [[] for _ in range(clients)]
        stop = asyncio.Event()
        opened = [asyncio.Event() for _ in range(clients)]
        async with aiohttp.ClientSession() as session:
            tasks = [
                asyncio.create_task(browser_latencies(session, url, counts[i], stop, opened[i])) for i in range(clients)
            ]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in opened)), OPEN_WITHIN)
            sent = await feed.run(rate, RATE_SECONDS)
            await asyncio.sleep(1)  # ok: drain the tail
            stop.set()
            kept = await asyncio.gather(*tasks)
        complete = all(kept) and all(len(c) >= sent for c in counts)
        achieved = sent / RATE_SECONDS
        results.append((achieved, min(len(c) for c in counts), all(kept)))
        print(
            f"rate {achieved:,.0f} msg/s: min received {min(len(c) for c in counts)}/{sent}, "
            f"dropped clients: {clients - sum(kept)}",
            flush=True,
        )
        if not complete:
            break
        rate *= 2
    return results


async def main() -> None:
    context = zmq.asyncio.Context()
    feed_port, http_port = free_port(), free_port()
    feed = Feed(context, feed_port)
    with tempfile.TemporaryDirectory() as directory:
        forwarder = start_forwarder(Path(directory), feed_port, http_port, queue=256)
        url = f"http://127.0.0.1:{http_port}/ws"
        try:
            await asyncio.wait_for(feed.sock.recv(), 30)  # the forwarder subscribed
            wait_for_port(http_port)  # and serves: it subscribes first, so a browser can miss nothing
            rows = [await measure_latency(feed, context, feed_port, url, n) for n in (1, 50)]
            rates = await sustained_rate(feed, url)
        finally:
            forwarder.terminate()
            forwarder.wait(10)
    context.destroy(linger=0)
    print("\n| clients | received per client | p50 | p99 | baseline zmq SUB p50 | p99 | p50 ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['received']:.0f}/{r['sent']} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | "
            f"{r['base_p50']:.2f} ms | {r['base_p99']:.2f} ms | {r['p50'] / r['base_p50']:.1f}x |"
        )
    full = [rate for rate, _, kept in rates[:-1] if kept] or [0]
    print(
        f"\nHighest rate all 10 clients got in full, none dropped: {max(full):,.0f} msg/s "
        f"(doubling from 500 msg/s; the next step, {rates[-1][0]:,.0f} msg/s, was not)"
    )


if __name__ == "__main__":
    asyncio.run(main())
