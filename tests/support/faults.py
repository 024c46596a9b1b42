"""Faults on the compose stack, for the fault tests and the fault benchmark: crashes, pauses, partitions, and
faults made from the host in a container's network namespace."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

# --- faults on the compose stack (the fault suite and the fault benchmark) ---
from .base import ROOT
from .stack import Stack


def kill_service(container: Any) -> None:
    """SIGKILL the service's own process (not tini): a crash, which the restart policy answers."""
    top = container.top()
    pid, cmd = top["Titles"].index("PID"), top["Titles"].index("CMD")
    [target] = [int(p[pid]) for p in top["Processes"] if p[cmd].startswith("python")]
    os.kill(target, signal.SIGKILL)


def restarted_and_healthy(container: Any, restarts: int) -> bool:
    """Whether `container` was restarted since it had `restarts` restarts, and is healthy again."""
    container.reload()
    state = container.attrs["State"]
    return container.attrs["RestartCount"] > restarts and state.get("Health", {}).get("Status") == "healthy"


@contextlib.contextmanager
def paused(container: Any) -> Iterator[None]:
    """`docker pause`: frozen, its TCP connections stay open; only missing heartbeats tell."""
    container.pause()
    try:
        yield
    finally:
        container.unpause()


@contextlib.contextmanager
def partitioned(stack: Stack, container: Any) -> Iterator[None]:
    """Cut `container` off the compose network (no FIN reaches anyone), then plug it back under its service name."""
    network = stack.network("home")
    network.disconnect(container)
    try:
        yield
    finally:
        network.connect(container, aliases=[container.labels["com.docker.compose.service"]])


# --- faults made in a container's network namespace, from the host: the container keeps cap_drop: ALL ---

RESOLVER = "127.0.0.11"  # Docker's resolver, in each container's own namespace
# Queries dropped where they arrive, silently (dropped on the way out, the sender would be told at once): a
# lookup waits as it does on a resolver that is cut off, 5 s x 2 attempts (Docker has already moved port 53).
DNS_OUTAGE = [f"PREROUTING -i lo -d {RESOLVER} -p {protocol} -j DROP" for protocol in ("udp", "tcp")]
CUT_FROM = ["OUTPUT ! -o lo -j DROP"]  # nothing the service sends leaves; what is sent to it arrives
CUT_TO = ["PREROUTING ! -i lo -j DROP"]  # nothing sent to the service arrives; what it sends leaves


NETEM = ROOT / "tests" / "netem.py"
NETEM_QUEUE = 7  # the NFQUEUE number tests/netem.py reads, in the container's own namespace


def in_namespace(container: Any, *command: str) -> None:
    """Run `command` on the host inside `container`'s network namespace."""
    container.reload()
    pid = str(container.attrs["State"]["Pid"])
    subprocess.run(["nsenter", "--target", pid, "--net", *command], check=True, capture_output=True, timeout=30)


def lossy(percent: float) -> list[str]:
    """Rules that drop `percent` % of the packets each way, at random (not the container's own loopback)."""
    probability = f"{percent / 100:.4f}"
    return [
        f"{chain} ! {side} lo -m statistic --mode random --probability {probability} -j DROP"
        for chain, side in (("PREROUTING", "-i"), ("OUTPUT", "-o"))
    ]


@contextlib.contextmanager
def firewalled(container: Any, rules: list[str], table: str = "raw") -> Iterator[None]:
    """iptables `rules` in `container`'s network namespace, for as long as the block runs (the raw table by
    default: it comes before Docker's own address translation of its resolver)."""
    for rule in rules:
        in_namespace(container, "iptables", "-t", table, "-I", *rule.split())
    try:
        yield
    finally:
        for rule in rules:
            in_namespace(container, "iptables", "-t", table, "-D", *rule.split())


@contextlib.contextmanager
def delayed(container: Any, delay: float, jitter: float = 0.0, reorder: float = 0.0) -> Iterator[None]:
    """What `container` sends held `delay` ± `jitter` seconds (`reorder`: that share sent at once, ahead), as
    netem on its interface would: tests/netem.py, in its network namespace, on the packets an NFQUEUE rule
    hands it (this kernel has no netem)."""
    container.reload()
    pid = str(container.attrs["State"]["Pid"])
    shape = ["--delay", str(delay), "--jitter", str(jitter), "--reorder", str(reorder)]
    holder = subprocess.Popen(
        ["nsenter", "--target", pid, "--net", sys.executable, str(NETEM), "--queue", str(NETEM_QUEUE), *shape],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "holding", "tests/netem.py did not start"
        with firewalled(container, [f"POSTROUTING ! -o lo -j NFQUEUE --queue-num {NETEM_QUEUE}"], "mangle"):
            yield
    finally:
        holder.terminate()  # lets every packet it holds go
        holder.wait(30)
