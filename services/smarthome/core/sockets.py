"""The one place where every zmq socket of every service and tool is made, for poller and asyncio loops alike.

The socket policy lives here and nowhere else: linger 0 (a stop never waits on the network), a cap on
message size, ZMTP heartbeats and TCP keepalive (a peer that vanished without a FIN is dropped within
seconds, and ZeroMQ reconnects as soon as it is back), a connecting socket's peer looked up outside libzmq
(core/dialer.py), and a log line for every connection it makes or loses.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import zmq
from zmq.auth.base import Authenticator

from smarthome.core.config import Publish, Subscribe
from smarthome.core.dialer import EVENTS, Dialer, Later, Soon
from smarthome.core.identity import Identity
from smarthome.core.keys import ZAP_DOMAIN, Keys, Policy, answer_zap, authenticator
from smarthome.core.logs import LimitedLines, peer_warnings

if TYPE_CHECKING:
    from smarthome.core.messaging import Subscriber

Handler = Callable[..., None]  # handler(frames), or handler(frames, peer) where the loop reads the peer's User-Id
Watch = Callable[..., None]  # watch(sock, handler, peer=False): how a loop calls the handler for each message
log = logging.getLogger("smarthome")
SUBSCRIPTION_LINES_PER_SECOND = 100  # a peer may subscribe thousands of times a second; a broker restart, a few dozen
subscriptions = LimitedLines(log, logging.INFO, per_second=SUBSCRIPTION_LINES_PER_SECOND)  # who subscribes
SUBSCRIPTION_MAX_BYTES = 1024  # above libzmq's 0-275 range that breaks the handshake (libzmq #4436)
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

    def publisher(self, spec: Publish) -> zmq.Socket:
        """An XPUB for `spec` that hands up every subscription, so the publisher can answer late joiners.

        XPUB_VERBOSE, not VERBOSER: an unsubscribe is handed up only when no peer holds that subscription any
        more (libzmq tracks them per peer), so a peer cannot take back what others gave.
        """
        return self.make(zmq.XPUB, bind=spec.bind, connect=spec.connect, xpub_verbose=True)

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
