"""The runtime every service shares: sockets, one zmq.Poller loop with timers, health, clean shutdown.

A service is single-threaded: every socket lives on the one poller loop (sockets are not thread-safe),
long waits are timers on that loop (never sleeps), and the poll timeout bounds how late a stop can be.
SIGTERM/SIGINT also wake the poller at once through a wakeup socket, so a stop takes milliseconds.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import zmq

from smarthome.core.config import Config, Publish, ServiceConfig, Subscribe
from smarthome.core.envelope import HEARTBEAT_TOPIC, EnvelopeError, Message, decode, encode
from smarthome.core.schema import explain

HEALTH_FILE_ENV = "SMARTHOME_HEALTH_FILE"  # touched by a live loop; the compose healthcheck reads its age
HEALTH_TOUCH_EVERY = 0.5  # seconds
DRAIN_LIMIT = 1000  # messages read from one socket per wakeup, so no socket starves the others

Body = TypeVar("Body", bound=msgspec.Struct)
_MORE = int(zmq.SNDMORE)
log = logging.getLogger("smarthome")


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send one multipart message: send_multipart's per-call checks cost 3x the sends themselves (benchmark)."""
    for frame in frames[:-1]:
        sock.send(frame, _MORE)
    sock.send(frames[-1])


class HealthFile:
    """A file the live loop touches; the compose healthcheck fails when it gets old. No path: a no-op."""

    def __init__(self) -> None:
        self.path = os.environ.get(HEALTH_FILE_ENV)
        self._touched = 0.0

    def touch(self) -> None:
        now = time.monotonic()
        if self.path and now - self._touched >= HEALTH_TOUCH_EVERY:
            with open(self.path, "a"):
                os.utime(self.path)
            self._touched = now

    def remove(self) -> None:
        if self.path:
            with contextlib.suppress(OSError):
                os.remove(self.path)


class ConnectionLog:
    """Logs a connecting socket's monitor events: connected, lost, and the first failed retry of each endpoint."""

    EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED

    def __init__(self, label: str) -> None:
        self.label = label
        self.retrying: set[str] = set()  # endpoints already reported as unreachable, so retries are logged once

    def record(self, frames: list[bytes]) -> None:
        # Decoded here: zmq.utils.monitor would pull in asyncio, +7 MiB RSS per service.
        head, address = frames
        event, _ = struct.unpack("=HI", head)
        endpoint = address.decode()
        if event == zmq.EVENT_CONNECTED:
            self.retrying.discard(endpoint)
            log.info("%s connected to %s", self.label, endpoint)
        elif event == zmq.EVENT_DISCONNECTED:
            log.info("%s lost %s, reconnecting", self.label, endpoint)
        elif endpoint not in self.retrying:
            self.retrying.add(endpoint)
            log.info("%s cannot reach %s yet, retrying", self.label, endpoint)


class Timer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def subscriber(context: zmq.Context, spec: Subscribe, max_message_bytes: int) -> zmq.Socket:
    """A SUB socket for `spec.topics` (every topic if empty), yet to be bound or connected."""
    sock = context.socket(zmq.SUB)
    sock.maxmsgsize = max_message_bytes  # a peer sending more is disconnected
    for topic in spec.topics or [""]:
        sock.subscribe(topic)
    return sock


class Inbox:
    """What every subscriber does with a received message before its handler sees it.

    Malformed messages are logged (one line, with the reason) and dropped; duplicates, stale re-sends and
    topics that only share a prefix with a subscription are dropped silently. `accept` returns the rest.
    """

    def __init__(self, label: str, topics: list[str], body_type: type[Body] | None) -> None:
        self.label = label
        self.wanted = set(topics)  # empty: every topic
        self.body_type = body_type
        self.newest: dict[tuple[str, str], tuple[int, int]] = {}  # (sender, topic) -> newest (boot, seq) seen

    def accept(self, frames: list[bytes]) -> tuple[Message, Any] | None:
        try:
            message = decode(frames)
        except EnvelopeError as exc:
            log.warning("%s dropped a malformed message: %s", self.label, exc)
            return None
        if self.wanted and message.topic not in self.wanted:  # subscriptions match prefixes: 'light' ~ 'lightning'
            return None
        key = (message.sender, message.topic)
        if key in self.newest and message.order <= self.newest[key]:
            return None  # a re-sent last value we already have
        try:
            body = msgspec.convert(message.body, self.body_type) if self.body_type else None
        except msgspec.ValidationError as exc:
            problem, where = explain(exc)
            where = f" at 'body.{where}'" if where else " in 'body'"
            log.warning("%s dropped a malformed message: topic '%s': %s%s", self.label, message.topic, problem, where)
            return None
        self.newest[key] = message.order
        return message, body


class Service:
    """One running service: its config, its sockets on one poller, its timers and its lifecycle."""

    def __init__(self, name: str, config: Config, label: str | None = None) -> None:
        self.name = name
        self.config = config
        self.spec: ServiceConfig | None = config.services.get(name)  # None for the command-line tools
        self.label = label or (self.spec.name if self.spec else name)  # how log lines name this service
        self.sender = f"{name}@{socket.gethostname()}"
        self.boot = time.time_ns()
        self.context = zmq.Context()
        self.context.linger = 0  # default for every socket, monitors included: a stop never waits on the network
        self.poller = zmq.Poller()
        self._readers: dict[Any, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_ids = itertools.count()
        self._stopping = False
        self.health = HealthFile()

    # --- sockets -----------------------------------------------------------------------------------

    def socket(self, kind: int) -> zmq.Socket:
        return self.context.socket(kind)

    def on_message(self, sock: zmq.Socket, handler: Callable[[list[bytes]], None]) -> None:
        """Call `handler(frames)` for each message `sock` receives.

        A wakeup reads until the socket is empty, but at most DRAIN_LIMIT messages, so one busy socket
        cannot starve the others or the timers.
        """

        def drain() -> None:
            for _ in range(DRAIN_LIMIT):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                handler(frames)

        self.poller.register(sock, zmq.POLLIN)
        self._readers[sock] = drain

    def attach(self, sock: zmq.Socket, *, bind: str | None = None, connect: list[str] | None = None) -> None:
        """Bind or connect `sock`, logging the connection events of a connecting socket as they happen."""
        if bind:
            sock.bind(bind)
            log.info("%s listening on %s", self.label, bind)
        if connect:
            self._watch_connections(sock)  # before connecting, so no event is missed
        for endpoint in connect or []:
            # Never fails on an unknown host: names resolve (and re-resolve on every reconnect) in the background.
            sock.connect(endpoint)

    def _watch_connections(self, sock: zmq.Socket) -> None:
        monitor = sock.get_monitor_socket(ConnectionLog.EVENTS)
        self.on_message(monitor, ConnectionLog(self.label).record)

    def publisher(self, spec: Publish, on_subscriber: Callable[[], None] | None = None) -> Publisher:
        return Publisher(self, spec, on_subscriber)

    def subscribe(
        self, spec: Subscribe, body_type: type[Body] | None, handler: Callable[[Message, Body | None], None]
    ) -> None:
        """Receive `spec.topics` (all if empty) with bodies validated as `body_type` (None: any JSON object).

        Malformed messages are logged and dropped; duplicates, stale re-sends and topics that only share a
        prefix with a subscription are dropped silently. Only new, valid messages reach `handler`.
        """
        sock = subscriber(self.context, spec, self.config.max_message_bytes)
        self.attach(sock, bind=spec.bind, connect=spec.connect)
        inbox = Inbox(self.label, spec.topics, body_type)

        def on_frames(frames: list[bytes]) -> None:
            if accepted := inbox.accept(frames):
                handler(*accepted)

        self.on_message(sock, on_frames)

    # --- timers ------------------------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(callback)
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_ids), timer))
        return timer

    def every(self, period: float, callback: Callable[[], None]) -> None:
        def tick() -> None:
            callback()
            self.call_later(period, tick)

        self.call_later(period, tick)

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def _poll_timeout_ms(self) -> int:
        timeout = self.config.poll_timeout_ms
        if self._timers:
            until_next = (self._timers[0][0] - time.monotonic()) * 1000
            timeout = min(timeout, max(0, int(until_next) + 1))
        return timeout

    # --- lifecycle ---------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT, then close every socket (linger 0) and return exit code 0."""
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())  # a signal makes the poller return at once
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        self.poller.register(wake_r, zmq.POLLIN)
        self._readers[wake_r] = lambda: wake_r.recv(64)
        log.info("%s started", self.label)
        try:
            while not self._stopping:
                self.health.touch()
                for sock, _ in self.poller.poll(self._poll_timeout_ms()):
                    if self._stopping:
                        break
                    self._readers[sock]()
                self._run_due_timers()
        finally:
            self.health.remove()
            self.context.destroy()  # closes each socket with its own linger: 0 unless a socket asked for more
            wake_r.close()
            wake_w.close()
        log.info("%s stopped", self.label)
        return 0


class Publisher:
    """An XPUB socket that re-sends the current state whenever a subscription arrives.

    This is how late joiners learn the state without sleeps: a subscriber that connects (or reconnects)
    sends its subscription, XPUB_VERBOSE hands every one of them to us, and we answer with our last
    message. Other subscribers get a copy too and drop it by (boot, seq). It also sends a heartbeat
    every heartbeat_interval, which is never re-sent: it says "alive now", not what the state is.
    """

    def __init__(self, service: Service, spec: Publish, on_subscriber: Callable[[], None] | None = None) -> None:
        self.service = service
        self.on_subscriber = on_subscriber
        self.topic = spec.topic
        self.sock = service.socket(zmq.XPUB)
        self.sock.xpub_verbose = True  # report every subscription, not only the first per topic
        self._last: list[bytes] | None = None
        self._seq = itertools.count(1)
        service.attach(self.sock, bind=spec.bind, connect=[spec.connect] if spec.connect else None)
        service.on_message(self.sock, self._on_subscription)
        service.every(service.config.heartbeat_interval, self._heartbeat)

    def publish(self, body: msgspec.Struct | dict[str, Any]) -> Message:
        message = self._message(self.topic, body)
        frames = encode(message)
        self._last = frames
        send_frames(self.sock, frames)
        return message

    def _heartbeat(self) -> None:
        send_frames(self.sock, encode(self._message(HEARTBEAT_TOPIC, {"for": self.topic})))

    def _message(self, topic: str, body: msgspec.Struct | dict[str, Any]) -> Message:
        if isinstance(body, msgspec.Struct):
            body = msgspec.to_builtins(body)
        return Message(topic, self.service.sender, self.service.boot, next(self._seq), time.time(), body)

    def _on_subscription(self, frames: list[bytes]) -> None:
        event = frames[0]
        prefix = event[1:]
        # A subscriber on several publishers sends all its subscriptions to each: answer only those for us.
        if event[:1] == b"\x01" and self.topic.encode().startswith(prefix):
            log.info("%s has a new subscriber; re-sending the current state", self.service.label)
            if self._last:
                send_frames(self.sock, self._last)
            if self.on_subscriber:
                self.on_subscriber()
