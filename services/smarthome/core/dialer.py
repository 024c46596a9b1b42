"""How a connecting socket reaches its peer by name without a name lookup ever stalling the home.

libzmq looks up the name of a tcp://name:port endpoint with a blocking getaddrinfo in its I/O thread, on every
reconnect (zeromq/libzmq #3243, #2961). While the resolver cannot answer (a container cut off its network waits
glibc's 5 s x 2 attempts for Docker's resolver), every connection of the context waits with it, and a link that
is back is not used until the lookup gives up. So libzmq is only ever given addresses: a Dialer looks the name
up on a thread of its own, connects the socket to tcp://address:port, and libzmq reconnects to that address by
itself, with no lookup. Whenever the connection is lost or cannot be made, the name is looked up again (at
once, then every LOOKUP_EVERY while the peer stays unreachable), and the socket moves to another address only
when the name no longer points at the one it uses (a recreated container, a swarm task on another node).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import zmq

log = logging.getLogger("smarthome")
Later = Callable[[float, Callable[[], None]], Any]  # the loop's call_later: returns a handle with cancel()
Soon = Callable[[Callable[[], None]], Any]  # the loop's call_soon_threadsafe: how a lookup's answer gets back
LOOKUP_EVERY = 1.0  # seconds between lookups while the peer cannot be reached (Docker's resolver is local)
LOOKUPS_AT_ONCE = 3  # a lookup stuck on a dead resolver does not hold back the next ones (glibc waits 10 s)
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | HANDSHAKE_FAILED


def by_name(endpoint: str) -> bool:
    """Whether `endpoint` names its host (tcp://light-switch:5556) rather than giving its address."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp" or not parts.hostname:
        return False
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        return True
    return False


class Dialer:
    """One connecting socket's way to its peer: looked up, connected, followed, and logged.

    Runs on the socket's loop (`later` schedules on it, `soon` hands a lookup's answer back to it); `record`
    takes the socket's monitor events (EVENTS): what libzmq connected, lost or retried. Only the lookup itself
    runs on a thread: a daemon one, so a stop never waits for a resolver that does not answer.
    """

    def __init__(
        self, sock: zmq.Socket, endpoint: str, label: str, later: Later, soon: Soon, server_key: bytes | None = None
    ) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.label = label
        self.later = later
        self.soon = soon
        self.server_key = server_key  # CurveZMQ: pinned anew on each connect (a socket keeps the last one set)
        parts = urlsplit(endpoint)
        self.host, self.port = parts.hostname or "", parts.port
        self.named = by_name(endpoint)  # else an address already (the host tools' 127.0.0.1): never looked up
        self.address: str | None = None  # what libzmq was given: tcp://address:port
        self.connected = False
        self.retrying = False  # reported unreachable: retries are logged once, until it connects
        self.lookups = 0  # in flight now
        self.looked_up = -LOOKUP_EVERY  # when the last lookup began (time.monotonic)
        self.next_lookup: Any = None  # the pending timer of the next lookup

    def start(self) -> None:
        if self.named:
            self._lookup_due()
        else:
            self._connect(self.endpoint)

    def record(self, frames: list[bytes]) -> None:
        """A monitor event of the socket: log it, and look the name up again when the peer is not reached."""
        head, address = frames
        event, _ = struct.unpack("=HI", head)
        if address.decode() != self.address:
            return  # about an address given up
        if event == zmq.EVENT_CONNECTED:
            self.connected, self.retrying = True, False
            log.info("%s connected to %s", self.label, self.endpoint)
            if self.next_lookup:
                self.next_lookup.cancel()
                self.next_lookup = None
            return
        self.connected = False
        if event == zmq.EVENT_DISCONNECTED:
            log.info("%s lost %s, reconnecting", self.label, self.endpoint)
        elif event == zmq.EVENT_CONNECT_RETRIED:
            self._unreachable()
        else:
            log.warning("%s could not open a session with %s (ZMTP or CurveZMQ handshake)", self.label, self.endpoint)
        if self.named and not self.next_lookup:
            wait = self.looked_up + LOOKUP_EVERY - time.monotonic()
            self.next_lookup = self.later(max(0.0, wait), self._lookup_due)

    def _unreachable(self, reason: str = "") -> None:
        if not self.retrying:
            self.retrying = True
            log.info("%s cannot reach %s yet, retrying%s", self.label, self.endpoint, reason)

    def _lookup_due(self) -> None:
        """Look the name up, and again every LOOKUP_EVERY until the peer is reached."""
        self.next_lookup = None
        if self.connected:
            return
        if self.lookups < LOOKUPS_AT_ONCE:
            self.lookups += 1
            self.looked_up = time.monotonic()
            threading.Thread(target=self._look_up, name=f"lookup {self.host}", daemon=True).start()
        self.next_lookup = self.later(LOOKUP_EVERY, self._lookup_due)

    def _look_up(self) -> None:
        """On a thread of its own: the name's IPv4 addresses (libzmq without ZMQ_IPV6 takes no other), or why not."""
        try:
            found = socket.getaddrinfo(self.host, self.port, socket.AF_INET, socket.SOCK_STREAM)
            answer: list[str] | OSError = list(dict.fromkeys(str(info[4][0]) for info in found))
        except OSError as exc:  # socket.gaierror: no such name, or no resolver to ask
            answer = exc
        with contextlib.suppress(RuntimeError, OSError):  # the loop has stopped: nobody waits for the answer
            self.soon(lambda: self._found(answer))

    def _found(self, answer: list[str] | OSError) -> None:
        self.lookups -= 1
        if isinstance(answer, OSError):
            self._unreachable(f" ({self.host}: {answer.strerror or answer})")
            return
        if self.connected or not answer:
            return  # an answer that came late: the address in use works
        if self.address and urlsplit(self.address).hostname in answer:
            return  # the name still points there: libzmq's own reconnects will do
        if self.address:
            with contextlib.suppress(zmq.ZMQError):
                self.sock.disconnect(self.address)
            log.info("%s follows %s to %s", self.label, self.endpoint, answer[0])
        self._connect(f"tcp://{answer[0]}:{self.port}")

    def _connect(self, address: str) -> None:
        if self.server_key:
            self.sock.curve_serverkey = self.server_key
        self.address = address
        self.sock.connect(address)
