"""The loop contract every service is written against (Runtime), and its poller implementation (Loop).

Runtime builds what every service does on five primitives of its loop (watch, every, call_later,
call_soon_threadsafe, send): publishers that heartbeat and answer late joiners, subscriptions judged by the
protocol, forgotten senders, a health file. Loop implements them on one zmq.Poller; the web forwarder's
AsyncioLoop (core/asyncio_loop.py) on asyncio, next to its browsers.

A poller service is single-threaded: every socket lives on the one poller loop (sockets are not thread-safe), and
long waits are timers on that loop (never sleeps). The poll timeout is the time to the next timer, and the
health file is touched by a timer every HEALTH_TOUCH_EVERY, so the loop never blocks for long; SIGTERM and
SIGINT wake the poller at once through a wakeup socket, so a stop takes milliseconds.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import heapq
import itertools
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

import zmq
from zmq.auth.base import Authenticator

from smarthome.core.config import Publish, Subscribe
from smarthome.core.envelope import HEARTBEAT_TOPIC, Message
from smarthome.core.identity import HEALTH_TOUCH_EVERY, Identity
from smarthome.core.logs import held_lines
from smarthome.core.messaging import Body, Outbox, Subscriber, Subscription, send_frames
from smarthome.core.protocol import Answers
from smarthome.core.sockets import Handler, Sockets, connection_of, dropped, subscriptions

_NOBLOCK, _EVENTS, _POLLIN = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)
DRAIN_LIMIT = 1000  # messages read from one socket per wakeup, so no socket starves the others
# Log lines are written once the loop has heard nothing for LINES_AFTER_IDLE (the routine's next hops, in other
# processes on the same cores, are done by then: writing, and the log driver it wakes, no longer competes with
# them), and at most LINES_HELD_AT_MOST after the event, however busy the loop is. Their timestamps are the events'.
LINES_AFTER_IDLE = 0.003
LINES_HELD_AT_MOST = 0.1
log = logging.getLogger("smarthome")


class Cancellable(Protocol):
    """A timer's handle: Loop's Timer, or asyncio's TimerHandle."""

    def cancel(self) -> None: ...


class Timer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Runtime(abc.ABC):
    """What every service does, on the primitives of whichever loop runs it (the abstract methods)."""

    me: Identity
    sockets: Sockets

    def _open(self, context: zmq.Context, zap: type[Authenticator] = Authenticator) -> None:
        """Make the socket factory on `context` (the implementation's own kind) and start the health touch."""
        self.sockets = Sockets(context, self.me, self.watch, self.call_later, self.call_soon_threadsafe, zap)
        self.every(HEALTH_TOUCH_EVERY, self.me.health.touch)

    # --- the loop's primitives ---------------------------------------------------------------------

    @abc.abstractmethod
    def watch(self, sock: zmq.Socket, handler: Handler, peer: bool = False, source: bool = False) -> None:
        """Call `handler(frames)` for each message `sock` receives; with `peer`, `handler(frames, user_id)`; with
        `source`, `handler(frames, connection)`: the descriptor of the connection it came on (ZMQ_SRCFD).
        Whatever the handler raises drops that message with a warning: no input stops the loop."""

    @abc.abstractmethod
    def every(self, period: float, callback: Callable[[], None]) -> None:
        """Call `callback` every `period` seconds, for as long as the loop runs."""

    @abc.abstractmethod
    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Call `callback` once, in `delay` seconds, unless the handle returned is cancelled first."""

    @abc.abstractmethod
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the loop, soon: the one thing another thread may ask of it."""

    @abc.abstractmethod
    def send(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        """Send one multipart message on `sock` (an XPUB or PUB: it never blocks)."""

    # --- what every service does on them -------------------------------------------------------------

    def publisher(self, spec: Publish, on_listener: Callable[[], None] | None = None) -> Publisher:
        return Publisher(self, spec, on_listener)

    def subscribe(
        self,
        spec: Subscribe,
        body_type: type[Body] | None,
        handler: Callable[[Message, Body | None], None],
        on_gone: Callable[[str], None] | None = None,
        on_gap: Callable[[str], None] | None = None,
        heartbeats: bool = False,
    ) -> Subscriber:
        """Receive `spec.topics` (all if empty) with bodies validated as `body_type` (None: any JSON object).

        Only new, valid messages reach `handler` (see Subscriber); heartbeats are heard here, and reach it only
        when `spec.topics` asks for them (or is empty: everything), or with `heartbeats` (who is alive).
        `on_gone(sender)` is called for a sender that stopped heartbeating: its state must not linger as alive [F1].
        `on_gap(sender)`: messages of `sender` were missed (counted by the subscriber's receiver) [G5].
        """
        config = self.me.config
        subscriber = Subscriber(self.me.label, config, spec.topics, body_type, self.sockets.policy, on_gap)
        heartbeats = heartbeats or not spec.topics or HEARTBEAT_TOPIC in spec.topics  # to the handler if asked

        def deliver(frames: list[bytes], peer: str | None) -> None:
            if (accepted := subscriber.accept(frames, peer)) and (heartbeats or accepted[0].topic != HEARTBEAT_TOPIC):
                handler(*accepted)

        self.sockets.subscribe(spec, subscriber, deliver)

        def expire() -> None:
            for sender in subscriber.expire():
                log.info("%s forgot %s: not heard for %gs", self.me.label, sender, config.gone_after)
                if on_gone:
                    on_gone(sender)

        self.every(config.heartbeat_interval, expire)
        return subscriber

    def restore(self, spec: Subscribe, body_type: type[Body], then: Callable[[Body | None], None]) -> None:
        """[P4] Start from the state a broker keeps under our own name from a life before ours: `then(body)` with
        the first such message on `spec.topics` within one heartbeat_interval, else `then(None)`. Nothing of
        ours is published before: the broker hands out an earlier life's state only until ours is heard [C3]."""

        def decide(body: Body | None) -> None:
            if wait.cancelled:
                return  # decided already: by the wait's end, or by a kept message
            wait.cancel()
            for sock in subscriber.socks:  # nothing more to hear here
                for topic in subscriber.subscriptions:
                    sock.unsubscribe(topic)
            then(body)

        def kept(message: Message, body: Body | None) -> None:
            if message.sender == self.me.sender and message.life != self.me.life:
                decide(body)

        subscriber = self.subscribe(spec, body_type, kept)
        wait = self.call_later(self.me.config.heartbeat_interval, lambda: decide(None))


class Loop(Runtime):
    """One service's poller loop: its sockets (made by `sockets`), its timers and its lifecycle."""

    def __init__(self, me: Identity) -> None:
        self.me = me
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self._readers: dict[Any, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_ids = itertools.count()
        self._stopping = False
        # Woken by a signal (set_wakeup_fd) or by another thread's call_soon_threadsafe: the poll returns at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._soon: collections.deque[Callable[[], None]] = collections.deque()
        self.poller.register(self._wake_r.fileno(), zmq.POLLIN)  # a plain socket: the poller hands back its fd
        self._readers[self._wake_r.fileno()] = self._woken
        self._open(self.context)

    # --- sockets -----------------------------------------------------------------------------------

    def watch(self, sock: zmq.Socket, handler: Handler, peer: bool = False, source: bool = False) -> None:
        """Call `handler(frames)` for each message `sock` receives; with `peer`, `handler(frames, user_id)`:
        the name of the key that peer authenticated with (CurveZMQ); with `source`, `handler(frames, connection)`.

        A wakeup reads until the socket is empty, but at most DRAIN_LIMIT messages, so one busy socket
        cannot starve the others or the timers. Right after a wakeup all code runs cold, and a raised zmq.Again
        costs more than a ZMQ_EVENTS read (tests/bench/hop_cost.py), so a wakeup's first message is followed by a
        ZMQ_EVENTS read; a burst ends with zmq.Again (one per burst, cheaper than a read per message).
        """
        label = self.me.label
        recv, get = sock.recv, sock.get  # the Cython methods: pyzmq's recv_multipart costs more than the receive

        def drain() -> None:
            for count in range(DRAIN_LIMIT):
                try:
                    frame = recv(_NOBLOCK, copy=False)  # a Frame tells if more parts follow without a getsockopt
                except zmq.Again:  # the end of a burst
                    return
                first, frames = frame, [frame.bytes]
                while frame.more:
                    frame = recv(_NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                try:  # guarded, as in sockets.guarded: no input can stop a service
                    if peer:
                        handler(frames, first.get("User-Id"))
                    elif source:
                        handler(frames, connection_of(first))
                    else:
                        handler(frames)
                except Exception as exc:
                    dropped(label, exc)
                if count == 0 and not get(_EVENTS) & _POLLIN:  # the usual wakeup, one message: end it unraised
                    return

        self.poller.register(sock, zmq.POLLIN)
        self._readers[sock] = drain

    # --- timers ------------------------------------------------------------------------------------

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the loop, soon: the one thing another thread may ask of it (a Dialer's lookups)."""
        self._soon.append(callback)  # before the wakeup byte: the loop that reads it finds the callback
        with contextlib.suppress(BlockingIOError):  # full: the loop has bytes to read, it wakes anyway
            self._wake_w.send(b"\0")

    def _woken(self) -> None:
        self._wake_r.recv(4096)
        while self._soon:
            self._soon.popleft()()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(callback)
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_ids), timer))
        return timer

    def send(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        send_frames(sock, frames)

    def every(self, period: float, callback: Callable[[], None]) -> None:
        def tick() -> None:
            callback()
            self.call_later(period, tick)

        self.call_later(period, tick)

    def _run_due_timers(self) -> bool:
        """Run the timers that are due; whether there were any."""
        now = time.monotonic()
        ran = False
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()
                ran = True
        return ran

    def _poll_timeout_ms(self, lines_held: bool) -> int:
        """Until the next timer (there is always one: the health touch), or LINES_AFTER_IDLE with lines held."""
        wait = self._timers[0][0] - time.monotonic()
        if lines_held:
            wait = min(wait, LINES_AFTER_IDLE)
        return max(0, int(wait * 1000) + 1)

    # --- lifecycle ---------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (or `stop()`), then close every socket (linger 0) and return exit code 0."""
        signal.set_wakeup_fd(self._wake_w.fileno())  # a signal makes the poller return at once
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        self.me.health.touch()
        log.info("%s started", self.me.label)
        try:
            with held_lines() as lines:  # written when the loop is idle: never on a message's path
                while not self._stopping:
                    ready = self.poller.poll(self._poll_timeout_ms(bool(lines.calls)))
                    for sock, _ in ready:
                        if self._stopping:
                            break
                        self._readers[sock]()
                    # Idle: the poll waited LINES_AFTER_IDLE for nothing (a timer that published, like the
                    # light switch's toggle, is an event too: its message is on its way now).
                    if not (self._run_due_timers() or ready) or lines.held_for() > LINES_HELD_AT_MOST:
                        lines.flush()
        finally:
            self.me.health.remove()
            self.context.destroy()  # closes each socket with its own linger: 0 unless a socket asked for more
            self._wake_r.close()
            self._wake_w.close()  # a lookup that answers now finds it closed (OSError), and nobody waiting
        log.info("%s stopped", self.me.label)
        return 0


class Publisher:
    """An XPUB socket that answers every subscription with a heartbeat and the current state [P2].

    This is how late joiners learn the state without sleeps: a subscriber that connects (or reconnects)
    sends its subscription, XPUB_VERBOSE hands every one of them to us, and we answer. Other subscribers
    get a copy too and drop it by seq [G2]. Answers are paced [P5]: a flood of subscriptions costs a few.
    It also sends a heartbeat every heartbeat_interval [P1].
    `on_listener` is called whenever a subscription names our topic exactly (a catch-all does not).
    """

    def __init__(self, loop: Runtime, spec: Publish, on_listener: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self.outbox = Outbox(loop.me, spec.topic, loop.me.config.topics[spec.topic])
        self.on_listener = on_listener
        self.label = loop.me.label
        self.answers = Answers(loop.me.config.heartbeat_interval)
        self.answer_held: Cancellable | None = None
        self.sock = loop.sockets.xpub(self._on_subscription, bind=spec.bind, connect=spec.connect)
        self.send = loop.send
        loop.every(loop.me.config.heartbeat_interval, lambda: self.send(self.sock, self.outbox.heartbeat()))

    @property
    def topic(self) -> str:
        return self.outbox.topic

    @property
    def listened(self) -> bool:
        """Whether a subscription names our topic right now (a command is sent only then [P3])."""
        return self.outbox.listened

    def publish(self, body: Any) -> Message:
        message, frames = self.outbox.publish(body)
        self.send(self.sock, frames)
        return message

    def _on_subscription(self, subscription: Subscription, peer: str | None) -> None:
        named = self.outbox.heard(subscription)
        if not (subscription.on and self.outbox.concerns(subscription)):
            return
        subscriptions.log(
            "%s has a new subscriber%s; answering with a heartbeat and the current state",
            self.label,
            f" at {peer}" if peer else "",
            peer=peer,
        )
        # One pace for every prefix: each gets the same answer, and it reaches every subscriber of our topic.
        if self.answers.now(b"", time.monotonic()):
            self._answer()
        elif not self.answer_held:
            due = self.answers.next_due() or 0.0
            self.answer_held = self.loop.call_later(due - time.monotonic(), self._answer_due)
        if named and self.on_listener:
            self.on_listener()

    def _answer(self) -> None:
        for frames in self.outbox.answer():
            self.send(self.sock, frames)

    def _answer_due(self) -> None:
        self.answer_held = None
        if self.answers.due(time.monotonic()):
            self._answer()
