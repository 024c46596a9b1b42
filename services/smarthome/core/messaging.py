"""Both ends of pub/sub apart from any loop: an Outbox makes what a publisher sends, an Inbox checks what a
subscriber receives. The poller runtime, the web forwarder and the host tools all use these.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple, TypeVar

import msgspec
import zmq

from smarthome.core.envelope import HEARTBEAT_TOPIC, EnvelopeError, Message, decode, encode
from smarthome.core.identity import Identity
from smarthome.core.schema import explain

Body = TypeVar("Body", bound=msgspec.Struct)
_MORE = int(zmq.SNDMORE)
log = logging.getLogger("smarthome")


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send one multipart message: send_multipart's per-call checks cost 3x the sends themselves (benchmark)."""
    for frame in frames[:-1]:
        sock.send(frame, _MORE)
    sock.send(frames[-1])


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


class Outbox:
    """One publisher's side of the envelope: sender, boot, sequence, last message and who listens to its topic."""

    def __init__(self, me: Identity, topic: str) -> None:
        self.me = me
        self.topic = topic
        self._topic = topic.encode()
        self.seq = 0
        self.last: list[bytes] | None = None  # the current state, re-sent to every subscriber that joins
        self.listened = False  # whether a subscription names this topic exactly (not a catch-all like '')

    def message(self, body: msgspec.Struct | dict[str, Any], topic: str | None = None) -> Message:
        """The next message on our topic (or `topic`, for events that never go on the wire as state)."""
        if isinstance(body, msgspec.Struct):
            body = msgspec.to_builtins(body)
        self.seq += 1
        return Message(topic or self.topic, self.me.sender, self.me.boot, self.seq, time.time(), body)

    def publish(self, body: msgspec.Struct | dict[str, Any]) -> tuple[Message, list[bytes]]:
        """The next message on our topic and its frames, remembered as the current state."""
        message = self.message(body)
        self.last = encode(message)
        return message, self.last

    def heartbeat(self) -> list[bytes]:
        return encode(self.message({"for": self.topic}, HEARTBEAT_TOPIC))

    def concerns(self, subscription: Subscription) -> bool:
        """Whether `subscription` covers our topic: a subscriber on several publishers sends all its topics to each."""
        return self._topic.startswith(subscription.prefix)

    def heard(self, subscription: Subscription) -> bool:
        """Track whether someone subscribes to our topic by name; True if this (un)subscription named it."""
        if subscription.prefix != self._topic:
            return False
        self.listened = subscription.on
        return True


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
