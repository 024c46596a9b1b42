"""The one place where every zmq socket of every service and tool is made, for poller and asyncio loops alike.

The socket policy lives here and nowhere else: linger 0 (a stop never waits on the network), a cap on
message size, ZMTP heartbeats and TCP keepalive (a peer that vanished without a FIN is dropped within
seconds, and ZeroMQ reconnects as soon as it is back), a connecting socket's peer looked up outside libzmq
(core/dialer.py), and a log line for every connection it makes or loses.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import zmq
from zmq.auth.base import Authenticator
from zmq.utils.monitor import parse_monitor_message

from smarthome.core.config import Subscribe
from smarthome.core.dialer import EVENTS, Dialer, Later, Soon
from smarthome.core.identity import Identity
from smarthome.core.keys import ZAP_DOMAIN, Keys, Policy, answer_zap, authenticator
from smarthome.core.logs import LimitedLines, peer_warnings
from smarthome.core.messaging import Subscription

if TYPE_CHECKING:
    from smarthome.core.messaging import Subscriber

Handler = Callable[..., None]  # handler(frames), or handler(frames, peer) where the loop reads the peer's User-Id
Watch = Callable[..., None]  # watch(sock, handler, peer=False): how a loop calls the handler for each message
log = logging.getLogger("smarthome")
SUBSCRIPTION_LINES_PER_SECOND = 100  # a peer may subscribe thousands of times a second; a broker restart, a few dozen
subscriptions = LimitedLines(log, logging.INFO, per_second=SUBSCRIPTION_LINES_PER_SECOND)  # who subscribes
SUBSCRIPTION_MAX_BYTES = 1024  # above libzmq's 0-275 range that breaks the handshake (libzmq #4436)
SUBSCRIPTIONS_PER_PEER = 64  # [P6] distinct subscriptions one connection may hold at a bound XPUB
_SRCFD = int(zmq.SRCFD)
MEMORY_BACK_AFTER = 0.5  # seconds from a cut connection's end to handing its memory back: libzmq has freed it by then
TCP_KEEPALIVE_IDLE = 10  # seconds of silence before the kernel probes a connection
TCP_KEEPALIVE_INTVL = 2  # seconds between probes
# A connect whose SYN a cut link swallowed is given up after this long and tried anew (every reconnect_ivl,
# 0.1 s), so a link that is back is used within about a second, not at TCP's next SYN (its backoff doubles).
CONNECT_TIMEOUT = 1.0


def guarded(label: str, handler: Handler) -> Handler:
    """`handler` made total: whatever a message makes it raise, the message is dropped with one (rate-limited)
    warning and the loop goes on. No input on any socket can stop a service."""

    def guarded_handler(*message: object) -> None:
        try:
            handler(*message)
        except Exception as exc:  # what catches everything: the reason is logged, never lost
            dropped(label, exc)

    return guarded_handler


def dropped(label: str, error: Exception) -> None:
    """One (rate-limited) warning for a message whose handler raised `error`."""
    peer_warnings.log("%s dropped a message it could not handle: %s: %s", label, type(error).__name__, error)


class Sockets:
    """Makes, configures and attaches sockets on `context`; `watch` is how the owning loop reads a socket."""

    def __init__(
        self,
        context: zmq.Context,
        me: Identity,
        watch: Watch,
        later: Later,
        soon: Soon,
        zap: type[Authenticator] = Authenticator,
    ) -> None:
        """`later`, `soon`: the loop's call_later and call_soon_threadsafe, for the Dialers of connecting sockets.
        `zap`: the ZAP handler for this loop. The base Authenticator has no loop of its own: `watch` drives it;
        an AsyncioAuthenticator runs on the asyncio loop by itself."""
        self.context = context
        self.me = me
        self.watch = watch
        self.later = later
        self.soon = soon
        self.keys = Keys(me) if me.config.curve else None  # None: no CurveZMQ (config `curve: false`)
        self.policy = Policy(me.config) if self.keys else None  # who may publish what, checked on arrival
        if self.keys:  # before any server socket binds: its first clients must meet a ZAP handler
            self.zap = authenticator(zap, context, self.keys.ring)
            if zap is Authenticator:
                watch(self.zap.zap_socket, functools.partial(answer_zap, self.zap))

    def make(
        self,
        kind: int,
        *,
        bind: str | None = None,
        connect: str | None = None,
        topics: Iterable[str] = (),
        **options: Any,
    ) -> zmq.Socket:
        """A socket of `kind` with the policy applied, `options` set (attribute style), then bound or connected.

        `topics` subscribes a SUB socket (nothing given: every topic).
        """
        sock = self.context.socket(kind)
        sock.linger = 0
        # A peer sending more is disconnected. Into an XPUB come only subscriptions: a topic name and a byte.
        sock.maxmsgsize = SUBSCRIPTION_MAX_BYTES if kind == zmq.XPUB else self.me.config.max_message_bytes
        if kind == zmq.XPUB:  # what a peer has sent waits in the kernel until we have counted what came before [P6]
            sock.rcvhwm = SUBSCRIPTIONS_PER_PEER
        zmtp = self.me.config.zmtp
        sock.heartbeat_ivl = int(zmtp.heartbeat_ivl * 1000)
        sock.heartbeat_timeout = int(zmtp.heartbeat_timeout * 1000)
        sock.heartbeat_ttl = int(zmtp.heartbeat_ttl * 1000)
        sock.tcp_keepalive = 1  # the kernel's own check too, for a link where even heartbeats cannot be sent
        sock.tcp_keepalive_idle = TCP_KEEPALIVE_IDLE
        sock.tcp_keepalive_intvl = TCP_KEEPALIVE_INTVL
        if self.keys:  # CurveZMQ: encrypted, and a server lets in only the known keys (ZAP)
            sock.curve_publickey, sock.curve_secretkey = self.keys.public, self.keys.secret
            if bind:
                sock.curve_server = True  # must come before bind
                sock.zap_domain = ZAP_DOMAIN.encode()
        for name, value in options.items():
            setattr(sock, name, value)
        if kind == zmq.SUB:
            for topic in list(topics) or [""]:
                sock.subscribe(topic)
        if bind:
            sock.bind(bind)
            log.info("%s listening on %s", self.me.label, bind)
        if connect:  # by a Dialer: libzmq is given the address, so no name lookup can stall its I/O thread
            sock.connect_timeout = int(CONNECT_TIMEOUT * 1000)
            server_key = self.keys.server_key(connect) if self.keys else None
            dialer = Dialer(sock, connect, self.me.label, self.later, self.soon, server_key)
            self.watch(sock.get_monitor_socket(EVENTS), dialer.record)  # before connecting: no event is missed
            dialer.start()
        return sock

    def xpub(
        self,
        on_subscription: Callable[[Subscription, str | None], None],
        *,
        bind: str | None = None,
        connect: str | None = None,
    ) -> zmq.Socket:
        """An XPUB that hands every (un)subscription to `on_subscription(subscription, peer)`, so that a
        publisher can answer late joiners; `peer` is the subscriber's address, where there is one to tell (a
        bound socket's subscriptions), so that what one subscriber causes is limited as its own. A bound XPUB
        holds each connection to SUBSCRIPTIONS_PER_PEER [P6].

        XPUB_VERBOSE, not VERBOSER: an unsubscribe is handed up only when no peer holds that subscription any
        more (libzmq tracks them per peer), so a peer cannot take back what others gave.
        """
        sock = self.make(zmq.XPUB, bind=bind, connect=connect, xpub_verbose=True)
        if not bind:  # its peers are the servers it pinned: the broker passes on at most UPSTREAM_MAX prefixes [C5]

            def from_broker(frames: list[bytes]) -> None:
                if subscription := Subscription.parse(frames):
                    on_subscription(subscription, None)

            self.watch(sock, from_broker)
            return sock
        cap = SubscriptionCap(sock, self.me.label, self.later)
        self.watch(sock.get_monitor_socket(zmq.EVENT_DISCONNECTED), cap.record)

        def from_peers(frames: list[bytes], descriptor: int) -> None:
            if (subscription := Subscription.parse(frames)) and cap.allows(subscription, descriptor):
                connection = connection_on(descriptor, cap.port) if descriptor >= 0 else None
                on_subscription(subscription, connection[1] if connection else None)

        self.watch(sock, from_peers, source=True)
        return sock

    def subscribe(
        self, spec: Subscribe, subscriber: Subscriber, deliver: Callable[[list[bytes], str | None], None]
    ) -> None:
        """Make `spec`'s SUB sockets for `subscriber` and have the loop call `deliver(frames, peer)` for each message.

        A connecting subscriber gets one socket per publisher, so it knows who sent what: the server whose
        key it pinned. A binding one has many peers: the loop reads each message's User-Id instead.
        """
        topics = subscriber.subscriptions
        if spec.bind:
            sock = self.make(zmq.SUB, bind=spec.bind, topics=topics)
            subscriber.socks.append(sock)
            if self.keys:
                self.watch(sock, deliver, peer=True)
            else:
                self.watch(sock, _from(None, deliver))
            return
        for endpoint in spec.connect:
            sock = self.make(zmq.SUB, connect=endpoint, topics=topics)
            subscriber.socks.append(sock)
            self.watch(sock, _from(self.me.config.binder_of(endpoint), deliver))


def _from(peer: str | None, deliver: Callable[[list[bytes], str | None], None]) -> Callable[[list[bytes]], None]:
    """deliver(frames, peer) for every message of a socket whose peer is known in advance (a closure: a
    keyword partial costs three times as much per call)."""
    return lambda frames: deliver(frames, peer)


class SubscriptionCap:
    """[P6] At most SUBSCRIPTIONS_PER_PEER distinct subscriptions per connection of a bound XPUB.

    libzmq files every distinct subscription (up to SUBSCRIPTION_MAX_BYTES) in the XPUB's trie, at many times
    its own size, for as long as the connection lasts, and can drop no single peer. Each subscription tells the
    connection it came on (ZMQ_SRCFD, and the peer's address and port, so a reused descriptor is a new
    connection): the one past the cap shuts that connection down, libzmq closes it and frees what it held,
    and once it is gone that memory is handed back to the system. The peer may come back and begin again.
    libzmq files a burst in the socket's own thread before we read any of it (XPUB_MANUAL too): what one
    burst holds until the cut is libzmq's; what stays after is not.
    """

    def __init__(self, sock: zmq.Socket, label: str, later: Later) -> None:
        self.label = label
        self.later = later
        self.port = int(sock.last_endpoint.rsplit(b":", 1)[1])
        self.held: dict[Connection, set[bytes]] = {}  # the prefixes each connection subscribed to
        self.cut: set[Connection] = set()  # connections shut down, until libzmq says they are gone
        self.memory_back_due = False
        self.released = 0  # libzmq's unsubscribes since memory was last handed back

    def allows(self, subscription: Subscription, descriptor: int) -> bool:
        """Whether `subscription`, from the connection on `descriptor`, is to be handed up."""
        if descriptor < 0:  # libzmq's own unsubscribes, for a connection gone: what it filed is freed now
            self.released += not subscription.on
            if self.released >= SUBSCRIPTIONS_PER_PEER:
                self.released = 0
                self._memory_back_soon()
            return True
        if not subscription.on:
            return True
        connection = connection_on(descriptor, self.port)
        if connection is None or connection in self.cut:  # gone already, or cut: nobody to answer
            return False
        held = self.held.setdefault(connection, set())
        if len(held) < SUBSCRIPTIONS_PER_PEER or subscription.prefix in held:
            held.add(subscription.prefix)
            return True
        shut_down(descriptor)
        self.cut.add(connection)
        peer = connection[1]
        peer_warnings.log(
            "%s cut the connection of %s: more than %d distinct subscriptions (SUBSCRIPTIONS_PER_PEER)",
            self.label,
            peer,
            SUBSCRIPTIONS_PER_PEER,
            peer=peer,
        )
        return False

    def record(self, frames: list[bytes]) -> None:
        """A monitor event of the XPUB: a connection is gone, and with it what it held. What libzmq filed for it
        may be far more than we have read of it (it files ahead of us), so its memory is handed back whatever
        we counted: once per MEMORY_BACK_AFTER at most, however fast connections come and go."""
        descriptor = parse_monitor_message(frames)["value"]
        for connection in [c for c in [*self.held, *self.cut] if c[0] == descriptor]:
            self.held.pop(connection, None)
            self.cut.discard(connection)
        self._memory_back_soon()

    def _memory_back_soon(self) -> None:
        if not self.memory_back_due:
            self.memory_back_due = True
            self.later(MEMORY_BACK_AFTER, self._memory_back)

    def _memory_back(self) -> None:
        self.memory_back_due = False
        give_back_memory()


Connection = tuple[int, str, int]  # descriptor, the peer's address and port


def connection_of(frame: zmq.Frame) -> int:
    """The descriptor of the connection `frame` came on (ZMQ_SRCFD), or -1: libzmq's own messages (an XPUB's
    unsubscribes for a peer that left) came on none."""
    try:
        return frame.get(_SRCFD)
    except zmq.ZMQError:
        return -1


def connection_on(descriptor: int, port: int) -> Connection | None:
    """The TCP connection to our `port` on `descriptor` (one libzmq owns), or None if it is not one now."""
    try:
        conn = socket.socket(fileno=descriptor)
    except OSError:  # closed meanwhile, or not a socket
        return None
    try:
        if conn.getsockname()[1] != port:  # closed meanwhile and the number given to another
            return None
        address, peer_port = conn.getpeername()[:2]
        return descriptor, address, peer_port
    except OSError:
        return None
    finally:
        conn.detach()  # the descriptor stays libzmq's


def shut_down(descriptor: int) -> None:
    """Shut the connection on `descriptor` down: libzmq sees it end, closes it and frees what it held."""
    with contextlib.suppress(OSError):  # closed meanwhile: gone already
        conn = socket.socket(fileno=descriptor)
        try:
            conn.shutdown(socket.SHUT_RDWR)
        finally:
            conn.detach()


_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; other C libraries give back by themselves


def give_back_memory() -> None:
    """Hand the memory freed in the middle of the heap back to the system: glibc keeps it otherwise, and a
    publisher that once held a flood's subscriptions would look that big for ever."""
    if _malloc_trim:
        _malloc_trim(0)
