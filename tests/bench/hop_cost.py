"""What a hop costs in Python: a subscriber's work per message warm, and what code costs right after a wakeup.

    .venv/bin/python -m tests.bench.hop_cost [--messages 200000] [--wakeups 200]

warm    MESSAGES messages of 100 B queued on loopback in advance, then read: by a raw SUB (`recv` twice, no
        check), then adding one thing at a time of what ours does (each frame's more flag, the envelope decoded
        and typed), and by our subscribe() on a Loop (also the sender, duplicate and gap checks, the handler).
        Microseconds per message, medians of REPEAT, interleaved.
wakeup  Each operation is the first thing this process does after a 50 ms sleep (as a service's first work
        for a message), then done again at once: p50 over WAKEUPS sleeps, operations interleaved. On a
        shared virtual machine the first run of any code after a sleep is many times slower than the next,
        so what a hop touches, not how fast it is warm, sets the routine's latency.
Writes tests/bench/results/hop_cost.md. Nothing is asserted; loopback only.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import sys
import time
from collections.abc import Callable

import zmq
from smarthome.core.envelope import Message, decode, encode
from smarthome.core.logs import HoldingLogger, TextFormatter, held_lines

from tests.bench.benchlib import header, load, median, percentile, table, write
from tests.bench.workers import Ours, Pad, pad_for

TOPIC = "bench"
REPEAT = 5  # warm runs per reader: one run can be 1.5x the others, by the machine alone
HELD = "log a line, held (the loop's way)"  # the one operation run with its log call held


def queued() -> tuple[zmq.Context, zmq.Socket, str]:
    """An XPUB on a free loopback port that never drops: what the subscriber cannot take yet waits here."""
    context = zmq.Context()
    pub = context.socket(zmq.XPUB)
    pub.sndhwm = 0
    pub.bind("tcp://127.0.0.1:*")
    return context, pub, pub.last_endpoint.decode()


def fill(pub: zmq.Socket, messages: list[list[bytes]]) -> None:
    pub.recv()  # the subscription: from here on nothing is dropped (no high-water mark on either side)
    for topic, payload in messages:
        pub.send(topic, zmq.SNDMORE)
        pub.send(payload)


def raw_two(sub: zmq.Socket) -> None:
    sub.recv()  # the topic frame
    sub.recv()  # and the payload, trusted to belong to it: raw does not look


def checked_two(sub: zmq.Socket) -> list[bytes]:
    """Our loop's receive: each frame with its more flag, so a stray frame cannot pair with another message's."""
    frame = sub.recv(copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sub.recv(copy=False)
        frames.append(frame.bytes)
    return frames


def decoded_two(sub: zmq.Socket) -> None:
    decode(checked_two(sub), Pad)


# The ladder from raw to ours, each step adding one thing every message of ours gets (before the protocol's rules).
READERS: dict[str, Callable[[zmq.Socket], object]] = {
    "raw SUB, `recv` x 2 (the frames not checked to be one message)": raw_two,
    "+ each frame's more flag checked (`recv(copy=False)`, as our loop reads)": checked_two,
    "+ the envelope decoded, its body typed (msgspec)": decoded_two,
}


def warm_reader(messages: list[list[bytes]], read: Callable[[zmq.Socket], object]) -> float:
    count = len(messages)
    context, pub, endpoint = queued()
    sub = context.socket(zmq.SUB)
    sub.subscribe(TOPIC.encode())
    sub.connect(endpoint)
    fill(pub, messages)
    sub.poll(10_000)
    started = time.perf_counter()
    for _ in range(count):
        read(sub)
    elapsed = time.perf_counter() - started
    context.destroy(linger=0)
    return elapsed / count


def warm_ours(messages: list[list[bytes]]) -> float:
    count = len(messages)
    context, pub, endpoint = queued()
    ours = Ours("hop-sub", TOPIC)
    got = 0

    def record(_sender: str, _seq: int, _ts: float) -> None:
        nonlocal got
        got += 1

    ours.subscribe(TOPIC, endpoint, record)
    fill(pub, messages)
    started = 0.0

    def tick() -> bool:
        nonlocal started
        started = started or time.perf_counter()
        return got >= count

    ours.serve(0.0005, tick)
    elapsed = time.perf_counter() - started
    context.destroy(linger=0)
    return elapsed / count


def operations(frames: list[bytes]) -> dict[str, Callable[[], object]]:
    """What a hop may do, each a callable: the envelope's decode, a log line made or held, the end of a drain."""
    context = zmq.Context()
    empty = context.socket(zmq.SUB)
    empty.bind("inproc://empty")
    log = logging.getLogger("smarthome.bench")
    log.propagate = False
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(TextFormatter(tracebacks=False))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def again() -> None:
        try:  # noqa: SIM105 (contextlib.suppress would add its own cost to what is measured)
            empty.recv(zmq.NOBLOCK)
        except zmq.Again:
            pass

    return {
        "decode the envelope": lambda: decode(frames),
        "log a line (record made, formatted, written)": lambda: log.info("%s received '%s'", "BENCH", TOPIC),
        HELD: lambda: log.info("%s received '%s'", "BENCH", TOPIC),
        "end a drain: zmq.Again raised": again,
        "end a drain: ZMQ_EVENTS read": lambda: empty.get(zmq.EVENTS),
    }


def wakeups(frames: list[bytes], count: int) -> dict[str, tuple[float, float]]:
    """Per operation: p50 of its first run right after a 50 ms sleep, and of its run right after that."""
    ops = operations(frames)
    first: dict[str, list[float]] = {name: [] for name in ops}
    again: dict[str, list[float]] = {name: [] for name in ops}
    with held_lines() as held:  # our loggers become HoldingLoggers; only HELD holds its call
        for i in range(count * len(ops)):
            name = list(ops)[i % len(ops)]
            HoldingLogger.holder = held if name == HELD else None
            time.sleep(0.05)  # ok: the sleep is the wakeup being measured
            for sample in (first, again):
                started = time.perf_counter_ns()
                ops[name]()
                sample[name].append((time.perf_counter_ns() - started) / 1000)
            held.calls.clear()  # held lines are never written here: only holding them is measured
    return {name: (percentile(first[name], 50), percentile(again[name], 50)) for name in ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000, help="queued messages per warm run")
    parser.add_argument("--wakeups", type=int, default=200, help="sleeps per operation")
    options = parser.parse_args()
    top = header("What a hop costs in Python", " ".join(["python -m tests.bench.hop_cost", *sys.argv[1:]]))
    life, body = 1, pad_for(100)
    messages = [
        encode(Message(TOPIC, "hop-pub@bench", life, seq, time.time(), body)) for seq in range(1, options.messages + 1)
    ]
    frames = messages[0]
    ours_name = "ours: subscribe() on a Loop (+ the sender, the protocol's rules, the handler)"
    measures = {name: functools.partial(warm_reader, read=read) for name, read in READERS.items()}
    measures[ours_name] = warm_ours
    runs: dict[str, list[float]] = {name: [] for name in measures}
    loads = [load()]
    for _ in range(REPEAT):
        for name, measure in measures.items():  # interleaved
            runs[name].append(measure(messages))
    loads.append(load())
    micros = {name: median(times) * 1e6 for name, times in runs.items()}
    raw = next(iter(micros.values()))
    cold = wakeups(frames, options.wakeups)
    loads.append(load())
    text = top + f"- load during the run: {min(loads):.2f}-{max(loads):.2f}\n\n"
    text += (
        f"Warm: {options.messages:,} queued 100 B messages per run, medians of {REPEAT}, interleaved. From raw to "
        "ours, each row adding one thing every message of ours gets:\n\n"
    )
    rows = [[name, f"{us:.2f}", f"{us / raw:.2f}"] for name, us in micros.items()]
    text += table(["subscriber", "us per message", "x raw"], rows, right={1, 2})
    text += f"\nRight after a wakeup: p50 over {options.wakeups} sleeps of 50 ms per operation.\n\n"
    text += table(
        ["operation", "first after a 50 ms sleep", "at once again", "ratio"],
        [[name, f"{a:.1f} us", f"{b:.1f} us", f"{a / b:.0f}x"] for name, (a, b) in cold.items()],
        right={1, 2, 3},
    )
    write("hop_cost", text)


if __name__ == "__main__":
    main()
