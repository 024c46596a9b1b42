"""Both ends of pub/sub on their sockets, apart from any loop: an Outbox makes what a publisher sends, a
Subscriber judges what a subscriber receives by the rules of docs/protocol.md (kept in core/protocol.py).
The poller runtime, the web forwarder and the host tools all use these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import msgspec
import zmq

from smarthome.core.config import Config
from smarthome.core.envelope import HEARTBEAT_TOPIC, EnvelopeError, Message, decode, encode, topic_of
from smarthome.core.identity import Identity
from smarthome.core.keys import Policy
from smarthome.core.logs import peer_warnings
from smarthome.core.protocol import Beat, Kind, Receiver

Body = TypeVar("Body", bound=msgspec.Struct)
_MORE = int(zmq.SNDMORE)
log = logging.getLogger("smarthome")


_send = zmq.backend.Socket.send  # what Socket.send calls after checks for options we never use


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send one multipart message: send_multipart's per-call checks cost 3x the sends themselves (benchmark)."""
    for frame in frames[:-1]:
        _send(sock, frame, _MORE)
    _send(sock, frames[-1])


class Subscription(NamedTuple):
    """One event an XPUB hands up: a peer (un)subscribed to every topic that starts with `prefix`."""

    on: bool
    prefix: bytes

    @classmethod
    def parse(cls, frames: list[bytes]) -> Subscription | None:
        """The (un)subscription in `frames`, or None for anything else a peer may send to an XPUB."""
        if len(frames) != 1 or frames[0][:1] not in (b"\x00", b"\x01"):
            return None
        return cls(frames[0][:1] == b"\x01", frames[0][1:])

    @property
    def frame(self) -> bytes:
        """The subscription as an XSUB sends it on."""
        return (b"\x01" if self.on else b"\x00") + self.prefix


def refused_instance(label: str, name: str, max_instances: int) -> None:
    """[A2] One (rate-limited per service) warning for a sender refused as one instance too many."""
    service = name.partition("@")[0]
    peer_warnings.log(
        "%s refused %s: %d instances of %s are alive (max_instances)", label, name, max_instances, service, peer=service
    )


class Outbox:
    """One publisher's side of the envelope: sender, life, seq, the current state and who listens to its topic."""

    def __init__(self, me: Identity, topic: str, kind: Kind) -> None:
        self.me = me
        self.topic = topic
        self.kind = kind
        self._topic = topic.encode()
        self.seq = 0  # [M5]
        self.last: list[bytes] | None = None  # a state topic's newest message, sent to every subscription [P2]
        self.listened = False  # whether a subscription names this topic exactly (not a catch-all like '')

    def message(self, body: msgspec.Struct | dict[str, Any], topic: str | None = None) -> Message:
        """The next message on our topic (or `topic`, for events that never go on the wire as state).
        A typed body is encoded as it is: msgspec writes a Struct's fields as a JSON object."""
        self.seq += 1
        return Message(topic or self.topic, self.me.sender, self.me.life, self.seq, time.time(), body)

    def publish(self, body: msgspec.Struct | dict[str, Any]) -> tuple[Message, list[bytes]]:
        """The next message on our topic and its frames; a state is kept as the current one [K2]."""
        message = self.message(body)
        frames = encode(message)
        if self.kind is Kind.STATE:
            self.last = frames
        return message, frames

    def heartbeat(self) -> list[bytes]:
        """[P1] 'This life runs, and its newest message on my topic is seq N': N without consuming one."""
        me, body = self.me, {"for": self.topic}
        return encode(Message(HEARTBEAT_TOPIC, me.sender, me.life, self.seq, time.time(), body))

    def answer(self) -> list[list[bytes]]:
        """[P2] What a new subscription gets: a heartbeat first, so that our life is known, then our state."""
        return [self.heartbeat(), self.last] if self.last else [self.heartbeat()]

    def concerns(self, subscription: Subscription) -> bool:
        """Whether `subscription` covers our topic: a subscriber on several publishers sends all its topics to each."""
        return self._topic.startswith(subscription.prefix)

    def heard(self, subscription: Subscription) -> bool:
        """Track whether someone subscribes to our topic by name; True if this (un)subscription named it."""
        if subscription.prefix != self._topic:
            return False
        self.listened = subscription.on
        return True


class Subscriber:
    """What every subscriber does with a received message before its handler sees it.

    The envelope is checked [M8] (a malformed message is logged and dropped, but another topic's body need not be
    ours: 'light' subscribed also matches 'lightning'), then who sent it [A1], whether its topic is declared and
    ours [K1, K5], and then the rules of a Receiver [L, G, R]. `accept` returns what passes, heartbeats of the
    wanted topics included (as message, None). When a Receiver says to ask again, every socket in `socks`
    subscribes to the topic once more and takes that back [R4]. Each gap is one log line [G5], and is told to
    `on_gap(sender)`.
    """

    def __init__(
        self,
        label: str,
        config: Config,
        topics: list[str],
        body_type: type[Body] | None,
        policy: Policy | None = None,
        on_gap: Callable[[str], None] | None = None,
    ) -> None:
        self.label = label
        self.on_gap = on_gap
        self.policy = policy  # with CurveZMQ: who may publish what
        self.kinds = config.topics
        self.wanted = set(topics)  # empty: every declared topic
        self.topics = frozenset(self.wanted or self.kinds)  # what reaches the Receiver [K1]
        self.body_type = body_type
        self.socks: list[zmq.Socket] = []  # the SUB sockets this subscriber reads, subscribed to `subscriptions`
        self.receiver = Receiver(
            config.topics,
            config.gone_after,
            config.heartbeat_interval,
            self._gap,
            max_instances=config.max_instances,
            on_refused=lambda name: refused_instance(label, name, config.max_instances),
        )

    @property
    def subscriptions(self) -> list[str]:
        """The topics to subscribe to: the wanted ones and their publishers' heartbeats (none given: all)."""
        return sorted({*self.wanted, HEARTBEAT_TOPIC}) if self.wanted else []

    def accept(self, frames: list[bytes], peer: str | None = None) -> tuple[Message, Any] | None:
        """The message in `frames` and its body, if it is new and valid and `peer` (the User-Id it came with,
        or the server it came from) may send it."""
        try:
            message = decode(frames, self.body_type)
        except EnvelopeError as exc:
            if not self._unwanted(topic_of(frames)):
                peer_warnings.log("%s dropped a malformed message: %s", self.label, exc, peer=peer)
            return None
        topic = message.topic
        if topic == HEARTBEAT_TOPIC:
            return self._heartbeat(message, peer)
        if topic not in self.topics:
            if not self.wanted:  # a subscriber of everything hears every topic: one nobody declared is refused
                peer_warnings.log("%s dropped a message on '%s': not a declared topic", self.label, topic, peer=peer)
            return None  # [K1] ('light' subscribed also matches 'lightning')
        if self.policy and (refused := self.policy.refuses(peer or "?", message.sender, topic)):
            peer_warnings.log("%s dropped a message on '%s': %s", self.label, topic, refused, peer=peer)
            return None
        if not self.receiver.take(message.sender, message.life, topic, message.seq, time.monotonic()):
            return None
        return message, message.body if self.body_type else None

    def _unwanted(self, topic: str | None) -> bool:
        """Whether `topic` is not ours though subscribed to: subscriptions match prefixes, 'light' ~ 'lightning'."""
        return topic is not None and bool(self.wanted) and topic not in self.wanted and topic != HEARTBEAT_TOPIC

    def _heartbeat(self, message: Message, peer: str | None) -> tuple[Message, None] | None:
        topic = message.body.get("for")
        if not isinstance(topic, str):
            sender = message.sender
            peer_warnings.log("%s dropped a malformed heartbeat from %s: no 'for' topic", self.label, sender, peer=peer)
            return None
        if topic not in (self.kinds if HEARTBEAT_TOPIC in self.wanted else self.topics):
            return None  # [K5] not a topic we receive (asked for heartbeats themselves: any declared one)
        if self.policy and (refused := self.policy.refuses(peer or "?", message.sender, topic)):
            peer_warnings.log("%s dropped a heartbeat for '%s': %s", self.label, topic, refused, peer=peer)
            return None
        beat = self.receiver.heartbeat(message.sender, message.life, topic, message.seq, time.monotonic())
        if beat is Beat.DROPPED:
            return None
        if beat is Beat.ASK:
            self._ask(topic, message.sender)
        return message, None

    def _ask(self, topic: str, sender: str) -> None:
        """[R4] Subscribe to `topic` once more and take it back: its publishers answer, none sees it unsubscribed."""
        log.info("%s asks again for '%s': %s has a newer state than we hold", self.label, topic, sender)
        for sock in self.socks:
            sock.subscribe(topic)
            sock.unsubscribe(topic)

    def _gap(self, sender: str, missed: int) -> None:
        log.warning("%s missed %d messages from %s", self.label, missed, sender)
        if self.on_gap:
            self.on_gap(sender)

    def expire(self) -> list[str]:
        """[F1] The senders not heard for `gone_after` seconds, now forgotten."""
        return self.receiver.expire(time.monotonic())
