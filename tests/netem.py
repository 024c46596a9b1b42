"""A stand-in for `tc qdisc add dev eth0 root netem delay D J reorder R`, for kernels built without netem.

    nsenter --target PID --net python tests/netem.py --delay 0.2 --jitter 0.05 [--reorder 0.25] --queue N

Holds each packet that an iptables NFQUEUE rule hands it (`support.delayed` adds the rule in the container's
network namespace) for `delay` ± `jitter` seconds, uniformly, then lets it go; with `reorder`, that share of
the packets goes at once instead, ahead of those held (netem's own reorder). Packets held at once are bounded
(MAX_HELD; past it, a packet goes at once). On SIGTERM every held packet is let go, then it exits 0.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import select
import signal
import socket
import sys
import time
from typing import Any

from netfilterqueue import NetfilterQueue

MAX_HELD = 100_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, required=True, help="seconds each packet is held")
    parser.add_argument("--jitter", type=float, default=0.0, help="± seconds, uniform")
    parser.add_argument("--reorder", type=float, default=0.0, help="share of packets sent at once (0-1)")
    parser.add_argument("--queue", type=int, required=True, help="the NFQUEUE number of the rule")
    args = parser.parse_args()
    held: list[tuple[float, int, Any]] = []  # (when it goes, arrival order, packet)
    order = itertools.count()
    stopping = False

    def arrived(packet: Any) -> None:
        if random.random() < args.reorder or len(held) >= MAX_HELD:
            packet.accept()
            return
        due = time.monotonic() + max(0.0, args.delay + random.uniform(-args.jitter, args.jitter))
        heapq.heappush(held, (due, next(order), packet))

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    queue = NetfilterQueue()
    queue.bind(args.queue, arrived)
    sock = socket.fromfd(queue.get_fd(), socket.AF_UNIX, socket.SOCK_STREAM)
    print("holding", flush=True)  # the queue is bound: the rule may be added
    try:
        while not stopping:
            wait = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
            try:
                readable, _, _ = select.select([sock], [], [], wait)
            except InterruptedError:
                continue
            if readable:
                queue.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                heapq.heappop(held)[2].accept()
    finally:
        for _, _, packet in held:
            packet.accept()
        queue.unbind()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
