"""The publisher and subscriber processes of throughput.py, one per process, driven over stdin/stdout.

    python -m tests.bench.workers pub|sub raw|ours|mqtt|nats|zenoh JSON   (JSON: topic, endpoint, index, size, ...)
    python -m tests.bench.workers proxy XSUB_ENDPOINT XPUB_ENDPOINT
    python -m tests.bench.workers zenoh-router ENDPOINT

Transports: `raw` is the fastest pyzmq we can write (one frame per message, plain send/recv, no envelope;
with "frames": 2, the topic in a frame of its own as ours sends it, read without any check);
`ours` is the project's runtime (Publisher and subscribe(), the envelope, body validation, duplicate
check), reached only through `Ours` below; `mqtt` is paho-mqtt carrying the same envelope JSON, `nats` nats-py
through a NATS server and `zenoh` eclipse-zenoh (peer to peer, or as clients of a router) the same, each read
with the same checks as ours (envelope, then body).

Commands, one JSON line each, answered with one JSON line:
  pub  {"cmd": "warm"}                       send one message  -> {"sender", "seq"}
       {"cmd": "send", "rate", "seconds"}    send paced at `rate` msg/s (0: flat out) -> {"first", "last"}
  sub  {"cmd": "seen"}                       -> {"senders": [...]} heard since the last collect
       {"cmd": "collect", "expect": {sender: [first, last]}, "latency": bool}
         wait until every expected seq arrived or nothing came for IDLE s, then report and forget:
         -> {"received", "expected", "gaps", "start", "end", "latencies"} (start/end: time.monotonic())
Every subscriber counts per-sender sequence gaps, so a loss anywhere (publisher high-water mark,
broker, subscriber) shows.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from itertools import pairwise

import msgspec
import zmq
from smarthome.core.envelope import Message, decode, encode

IDLE = 0.5  # seconds without a message after which a collect reports what it has
COLLECT_LIMIT = 60.0  # seconds a collect may wait in all
RAW_HEAD = struct.Struct("!IQd")  # sender index, seq, send time


class Pad(msgspec.Struct):
    pad: str


def pad_for(size: int) -> dict[str, str]:
    """A body that makes the envelope's JSON about `size` bytes (its own fields take ~90)."""
    return {"pad": "x" * max(0, size - 90)}


class Ours:
    """The one place that drives the project's runtime in-process: a rename there is a change here only."""

    def __init__(self, name: str, topic: str) -> None:
        from smarthome.core.config import Config, Zmtp
        from smarthome.core.identity import Identity
        from smarthome.core.protocol import Kind
        from smarthome.core.runtime import Loop

        # Heartbeats once an hour: never, here. No CurveZMQ, like the other rows (tests/bench/curve.py has its cost).
        zmtp = Zmtp(heartbeat_ivl=1, heartbeat_timeout=10, heartbeat_ttl=10)
        config = Config(1 << 20, 3600, 3, zmtp, {topic: Kind.STATE}, services={}, curve=False, path="bench")
        me = Identity(name, config)
        self.service = Loop(me)
        self.sender = me.sender

    def publisher(self, topic: str, endpoint: str, bind: bool) -> Callable[[dict], int]:
        """publish(body) -> seq, on an XPUB that binds or connects `endpoint`."""
        from smarthome.core.config import Publish

        side = {"bind": endpoint} if bind else {"connect": endpoint}
        publisher = self.service.publisher(Publish(topic, **side))
        return lambda body: publisher.publish(body).seq

    def subscribe(self, topic: str, endpoint: str, record: Callable[[str, int, float], None]) -> None:
        from smarthome.core.config import Subscribe

        self.service.subscribe(Subscribe([topic], connect=[endpoint]), Pad, lambda m, _: record(m.sender, m.seq, m.ts))

    def serve(self, every: float, tick: Callable[[], None]) -> None:
        """Run the service's loop, calling tick() every `every` seconds, until tick() returns True."""
        self.service.every(every, lambda: tick() and self.service.stop())
        self.service.run()


# --- subscribers ---------------------------------------------------------------------------------------


class Tally:
    """What a subscriber heard since the last collect, and the collect it is waiting to answer."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, int, float, float]] = []  # sender, seq, arrival (monotonic), latency
        self.pending: dict | None = None
        self.since = 0.0

    def record(self, sender: str, seq: int, ts: float) -> None:
        self.heard.append((sender, seq, time.monotonic(), time.time() - ts))

    def command(self, line: str) -> bool:
        """Handle one command line; True on end of input (time to exit)."""
        if not line:
            return True
        command = json.loads(line)
        if command["cmd"] == "seen":
            reply({"senders": sorted({sender for sender, *_ in self.heard})})
            self.heard = []
        else:
            self.pending, self.since = command, time.monotonic()
        return False

    def check(self) -> None:
        """Answer a pending collect once everything expected is in, or the stream went quiet."""
        if not self.pending:
            return
        expect = {sender: range(first, last + 1) for sender, (first, last) in self.pending["expect"].items()}
        expected = sum(map(len, expect.values()))
        now = time.monotonic()
        quiet = now - max(self.heard[-1][2] if self.heard else 0, self.since) > IDLE
        if len(self.heard) < expected and not quiet and now - self.since < COLLECT_LIMIT:
            return  # not all in yet, still arriving
        wanted = [h for h in self.heard if h[0] in expect and h[1] in expect[h[0]]]
        seqs: dict[str, set[int]] = {sender: set() for sender in expect}
        for sender, seq, *_ in wanted:
            seqs[sender].add(seq)
        received = sum(map(len, seqs.values()))
        if received < expected and not quiet and now - self.since < COLLECT_LIMIT:
            return
        reply(
            {
                "received": received,
                "expected": expected,
                "gaps": sum(_gaps(sorted(s), expect[sender]) for sender, s in seqs.items()),
                "start": wanted[0][2] if wanted else 0,
                "end": wanted[-1][2] if wanted else 0,
                "latencies": [h[3] for h in wanted] if self.pending.get("latency") else [],
            }
        )
        self.heard, self.pending = [], None


def _gaps(seqs: list[int], wanted: range) -> int:
    """How many runs of missing seqs `seqs` has within `wanted`."""
    edges = [wanted.start - 1, *seqs, wanted.stop]
    return sum(b - a > 1 for a, b in pairwise(edges))


def reply(answer: dict) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def stdin_ready(timeout: float = 0) -> bool:
    return bool(select.select([sys.stdin], [], [], timeout)[0])


def sub_raw(options: dict) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.subscribe(options["topic"].encode())
    sock.connect(options["endpoint"])
    two_frames = options.get("frames") == 2
    offset = 0 if two_frames else len(options["topic"])
    tally = Tally()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    while True:
        try:
            data = sock.recv(zmq.NOBLOCK)
            if two_frames:
                data = sock.recv()  # the payload: trusted to follow the topic, as nothing else is sent here
        except zmq.Again:  # only when the queue is empty: look at the commands, then wait
            ready = dict(poller.poll(50))
            if sys.stdin.fileno() in ready and tally.command(sys.stdin.readline()):
                break
            tally.check()
            continue
        index, seq, ts = RAW_HEAD.unpack_from(data, offset)
        tally.record(str(index), seq, ts)
    context.destroy(linger=0)


def sub_ours(options: dict) -> None:
    ours = Ours(f"sub{options['index']}", options["topic"])
    tally = Tally()
    ours.subscribe(options["topic"], options["endpoint"], tally.record)

    def tick() -> bool:
        if stdin_ready() and tally.command(sys.stdin.readline()):
            return True
        tally.check()
        return False

    ours.serve(0.02, tick)  # as often as every other path's subscriber looks at its commands


def mqtt_client(options: dict, name: str):
    """A paho client connected to Mosquitto, with TCP_NODELAY when asked."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    client.max_queued_messages_set(1000)  # QoS 1 publisher: back-pressure instead of an unbounded queue in paho
    if options["nodelay"]:
        client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    host, port = options["endpoint"].rsplit(":", 1)
    client.connect(host, int(port))
    return client


def sub_mqtt(options: dict) -> None:
    tally = Tally()
    client = mqtt_client(options, f"{options['topic']}-sub{options['index']}")
    topic = options["topic"]

    client.on_message = lambda _c, _u, message: checked(topic.encode(), message.payload, tally)
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(options["topic"], options["qos"])
    client.loop_start()  # paho's network thread receives; this one answers commands
    answer_commands(tally)
    client.disconnect()
    client.loop_stop()


def answer_commands(tally: Tally) -> None:
    """Answer the driver's commands until its end of input, while another thread of the client receives."""
    while True:
        if stdin_ready(0.02) and tally.command(sys.stdin.readline()):
            return
        tally.check()


def checked(topic: bytes, payload: bytes, tally: Tally) -> None:
    """What every foreign path's subscriber does with a payload: the same checks as ours, envelope then body."""
    envelope = decode([topic, payload])
    msgspec.convert(envelope.body, Pad)
    tally.record(envelope.sender, envelope.seq, envelope.ts)


def sub_nats(options: dict) -> None:
    import asyncio

    import nats

    async def run() -> None:
        tally = Tally()
        topic = options["topic"].encode()
        client = await nats.connect(f"nats://{options['endpoint']}", pending_size=64 * 1024 * 1024)

        async def on_message(message) -> None:
            checked(topic, message.data, tally)

        # The default pending limits drop a slow subscriber's messages, as ZeroMQ's HWM and Mosquitto's queue do.
        await client.subscribe(options["topic"], cb=on_message)
        await client.flush()
        commands = asyncio.Queue()
        asyncio.get_running_loop().add_reader(sys.stdin, lambda: commands.put_nowait(sys.stdin.readline()))
        while True:
            try:
                if tally.command(await asyncio.wait_for(commands.get(), 0.02)):
                    break
            except TimeoutError:
                pass
            tally.check()
        await client.close()

    asyncio.run(run())


def zenoh_session(options: dict):
    """A Zenoh session: a peer listening on `listen` and/or connecting to `connect`, or a router's client."""
    import zenoh

    config = zenoh.Config()
    config.insert_json5("mode", json.dumps(options.get("mode", "peer")))
    config.insert_json5("scouting/multicast/enabled", "false")  # loopback only, and only whom we name
    config.insert_json5("listen/endpoints", json.dumps(options.get("listen", [])))
    config.insert_json5("connect/endpoints", json.dumps(options.get("connect", [])))
    return zenoh.open(config)


def sub_zenoh(options: dict) -> None:
    tally = Tally()
    topic = options["topic"].encode()
    session = zenoh_session(options)
    subscriber = session.declare_subscriber(
        options["topic"], lambda sample: checked(topic, sample.payload.to_bytes(), tally)
    )  # Zenoh's own threads call back; this one answers commands
    answer_commands(tally)
    subscriber.undeclare()
    session.close()


# --- publishers ----------------------------------------------------------------------------------------


def paced(send: Callable[[], int], rate: float, seconds: float) -> dict:
    """Call send() at `rate` per second (0: as fast as it goes) for `seconds`: the first and last seq sent."""
    started = time.perf_counter()
    first = last = send()
    if rate <= 0:
        while time.perf_counter() - started < seconds:
            for _ in range(100):
                last = send()
        return {"first": first, "last": last}
    for i in range(1, int(rate * seconds)):
        last = send()
        ahead = started + i / rate - time.perf_counter()
        if ahead > 0.001:  # bursts of at most 1 ms keep pacing cheap at high rates
            time.sleep(ahead)  # ok: pacing the publisher is what this measures
    return {"first": first, "last": last}


def serve_pub(sender: str, send: Callable[[], int], flush: Callable[[], None] = lambda: None) -> None:
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "warm":
            reply({"sender": sender, "seq": send()})
        else:
            result = paced(send, command["rate"], command["seconds"])
            flush()
            reply(result)


def pub_raw(options: dict) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.bind(options["endpoint"])
    topic = options["topic"].encode()
    index = options["index"]
    padding = b"x" * max(0, options["size"] - len(topic) - RAW_HEAD.size)
    seq = 0

    def send() -> int:
        nonlocal seq
        seq += 1
        sock.send(topic + RAW_HEAD.pack(index, seq, time.time()) + padding)
        return seq

    def send_two() -> int:
        nonlocal seq
        seq += 1
        sock.send(topic, zmq.SNDMORE)
        sock.send(RAW_HEAD.pack(index, seq, time.time()) + padding)
        return seq

    serve_pub(str(index), send_two if options.get("frames") == 2 else send)
    context.destroy(linger=0)


def pub_ours(options: dict) -> None:
    ours = Ours(f"pub{options['index']}", options["topic"])
    publish = ours.publisher(options["topic"], options["endpoint"], options["bind"])
    body = pad_for(options["size"])
    serve_pub(ours.sender, lambda: publish(body))


def pub_mqtt(options: dict) -> None:
    import paho.mqtt.client as mqtt

    sender = f"pub{options['index']}@{socket.gethostname()}"
    client = mqtt_client(options, f"{options['topic']}-{sender}")
    while not client.is_connected():
        client.loop(0.1)
    topic, qos, body, life = options["topic"], options["qos"], pad_for(options["size"]), 1
    seq = 0
    last: mqtt.MQTTMessageInfo | None = None

    def send() -> int:
        nonlocal seq, last
        seq += 1
        payload = encode(Message(topic, sender, life, seq, time.time(), body))[1]
        while True:
            # No network thread: publish() writes what the socket takes; loop() writes the rest and reads acks.
            last = client.publish(topic, payload, qos)
            if last.rc == mqtt.MQTT_ERR_SUCCESS:
                break
            client.loop(0.001)  # paho's queue is full: wait for the broker (TCP back-pressure)
        if client.want_write() or (qos and seq % 50 == 0):
            client.loop(0)
        return seq

    def flush() -> None:
        deadline = time.monotonic() + COLLECT_LIMIT
        while (client.want_write() or (last and not last.is_published())) and time.monotonic() < deadline:
            client.loop(0.01)

    serve_pub(sender, send, flush)
    client.disconnect()


def enveloped(options: dict) -> tuple[str, Callable[[], tuple[int, bytes]]]:
    """The sender name and a maker of the next (seq, payload): the envelope JSON every foreign path carries."""
    sender = f"pub{options['index']}@{socket.gethostname()}"
    topic, body, seq = options["topic"], pad_for(options["size"]), 0

    def next_payload() -> tuple[int, bytes]:
        nonlocal seq
        seq += 1
        return seq, encode(Message(topic, sender, 1, seq, time.time(), body))[1]

    return sender, next_payload


def pub_nats(options: dict) -> None:
    import asyncio

    import nats

    sender, next_payload = enveloped(options)

    async def run() -> None:
        client = await nats.connect(f"nats://{options['endpoint']}", pending_size=64 * 1024 * 1024)
        loop = asyncio.get_running_loop()

        async def send() -> int:
            seq, payload = next_payload()
            await client.publish(options["topic"], payload)  # into nats-py's buffer; its flusher writes it
            return seq

        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            if command["cmd"] == "warm":
                seq = await send()
                await client.flush()
                reply({"sender": sender, "seq": seq})
                continue
            rate, seconds = command["rate"], command["seconds"]
            started, first = time.perf_counter(), await send()
            last, count = first, int(rate * seconds) if rate > 0 else 0
            i = 1
            while (i < count) if rate > 0 else (time.perf_counter() - started < seconds):
                last, i = await send(), i + 1
                ahead = started + i / rate - time.perf_counter() if rate > 0 else 0
                if ahead > 0.001:
                    await asyncio.sleep(ahead)  # ok: pacing the publisher is what this measures
                elif i % 100 == 0:
                    await asyncio.sleep(0)  # ok: no wait, a yield to nats-py's flusher task so that it writes
            await client.flush()
            reply({"first": first, "last": last})
        await client.close()

    asyncio.run(run())


def pub_zenoh(options: dict) -> None:
    sender, next_payload = enveloped(options)
    if "listens" in options:  # peer to peer: each publisher listens on its own, every subscriber connects to all
        options["listen"] = [options["listens"][options["index"]]]
    session = zenoh_session(options)
    publisher = session.declare_publisher(options["topic"])

    def send() -> int:
        seq, payload = next_payload()
        publisher.put(payload)
        return seq

    serve_pub(sender, send)
    publisher.undeclare()
    session.close()


def zenoh_router(endpoint: str) -> None:
    """A Zenoh router: the Rust routing core in router mode; this Python process only keeps it open."""
    import signal

    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before Zenoh starts its threads: they inherit the mask
    session = zenoh_session({"mode": "router", "listen": [endpoint]})
    signal.sigwait(stop)
    session.close()


def proxy(xsub: str, xpub: str) -> None:
    """zmq.proxy: the C-level forwarder, the ceiling for any broker."""
    context = zmq.Context()
    frontend, backend = context.socket(zmq.XSUB), context.socket(zmq.XPUB)
    frontend.bind(xsub)
    backend.bind(xpub)
    zmq.proxy(frontend, backend)


def main() -> None:
    if sys.argv[1] == "proxy":
        proxy(sys.argv[2], sys.argv[3])
        return
    if sys.argv[1] == "zenoh-router":
        zenoh_router(sys.argv[2])
        return
    role, transport, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    os.environ.setdefault("SMARTHOME_LOG_LEVEL", "WARNING")
    {
        ("pub", "raw"): pub_raw,
        ("pub", "ours"): pub_ours,
        ("pub", "mqtt"): pub_mqtt,
        ("sub", "raw"): sub_raw,
        ("sub", "ours"): sub_ours,
        ("sub", "mqtt"): sub_mqtt,
        ("pub", "nats"): pub_nats,
        ("sub", "nats"): sub_nats,
        ("pub", "zenoh"): pub_zenoh,
        ("sub", "zenoh"): sub_zenoh,
    }[role, transport](options)


if __name__ == "__main__":
    main()
