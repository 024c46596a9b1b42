"""Both ends of pub/sub apart from any loop: an Outbox makes what a publisher sends, an Inbox checks what a
subscriber receives. The poller runtime, the web forwarder and the host tools all use these.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, NamedTuple, TypeVar

import msgspec
import zmq

from smarthome.core.envelope import HEARTBEAT_TOPIC, EnvelopeError, Message, decode, encode, topic_of
from smarthome.core.identity import Identity
from smarthome.core.keys import Policy
from smarthome.core.sockets import warnings

Body = TypeVar("Body", bound=msgspec.Struct)
_MORE = int(zmq.SNDMORE)
log = logging.getLogger("smarthome")
MAX_SENDERS = 10_000  # per-sender tables are bounded: past this, the least recently heard sender is forgotten


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
        """The next message on our topic (or `topic`, for events that never go on the wire as state).
        A typed body is encoded as it is: msgspec writes a Struct's fields as a JSON object."""
        self.seq += 1
        return Message(topic or self.topic, self.me.sender, self.me.boot, self.seq, time.time(), body)

    def publish(self, body: msgspec.Struct | dict[str, Any]) -> tuple[Message, list[bytes]]:
        """The next message on our topic and its frames, remembered as the current state."""
        message = self.message(body)
        self.last = encode(message)
        return message, self.last

    def heartbeat(self) -> list[bytes]:
        """'Alive, and my newest message on my topic is seq N': it carries our seq without consuming one."""
        me, body = self.me, {"for": self.topic}
        return encode(Message(HEARTBEAT_TOPIC, me.sender, me.boot, self.seq, time.time(), body))

    def concerns(self, subscription: Subscription) -> bool:
        """Whether `subscription` covers our topic: a subscriber on several publishers sends all its topics to each."""
        return self._topic.startswith(subscription.prefix)

    def heard(self, subscription: Subscription) -> bool:
        """Track whether someone subscribes to our topic by name; True if this (un)subscription named it."""
        if subscription.prefix != self._topic:
            return False
        self.listened = subscription.on
        return True


class Liveness:
    """When each sender was last heard, least recent first, bounded to MAX_SENDERS: who is alive, who is gone."""

    def __init__(self, gone_after: float) -> None:
        self.gone_after = gone_after
        self._heard: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, sender: str) -> bool:
        return sender in self._heard

    def hear(self, sender: str) -> str | None:
        """`sender` is alive now; the sender forgotten to keep the bound, if one had to be."""
        self._heard[sender] = time.monotonic()
        self._heard.move_to_end(sender)
        return self._heard.popitem(last=False)[0] if len(self._heard) > MAX_SENDERS else None

    def drop(self, sender: str) -> None:
        self._heard.pop(sender, None)

    def gone(self) -> list[str]:
        """The senders not heard for `gone_after` seconds, no longer tracked."""
        deadline = time.monotonic() - self.gone_after
        gone = []
        while self._heard and next(iter(self._heard.values())) < deadline:  # least recently heard first
            gone.append(self._heard.popitem(last=False)[0])
        return gone


class Stream:
    """What a subscriber knows of one (sender, topic): the boot and seq of its newest message, and the seq up to
    which every message is accounted for (received, or counted as missed)."""

    __slots__ = ("boot", "counted", "seq")

    def __init__(self, boot: int, seq: int) -> None:
        self.boot, self.seq, self.counted = boot, seq, seq

    @classmethod
    def resumed(cls, forgotten: Stream) -> Stream:
        """A forgotten sender's stream, back: no state held (seq 0), gaps still counted from where it was."""
        stream = cls(forgotten.boot, 0)
        stream.counted = forgotten.counted
        return stream


class Inbox:
    """What every subscriber does with a received message before its handler sees it.

    Malformed messages are logged (one line, with the reason) and dropped; duplicates, stale re-sends and
    topics that only share a prefix with a subscription are dropped silently. `accept` returns the rest,
    heartbeats of the wanted topics included (as message, None).

    Heartbeats carry the sender's current seq without consuming one, so a seq jump, in a message or in a
    heartbeat, is exactly the number of messages we missed (slow joiner, HWM drops, a partition): each gap is
    one log line and counted per sender in `missed`. A gap seen in a heartbeat means we also missed the
    current state: subscribing anew on `sock` makes every publisher of the topic (and the broker) re-send it.
    A sender not heard for `gone_after` seconds is returned by `expire` and forgotten. Every table is
    bounded to MAX_SENDERS senders.
    """

    def __init__(
        self,
        label: str,
        topics: list[str],
        body_type: type[Body] | None,
        gone_after: float,
        policy: Policy | None = None,
    ) -> None:
        self.label = label
        self.policy = policy  # with CurveZMQ: who may publish what
        self.wanted = set(topics)  # empty: every topic
        self.body_type = body_type
        self.gone_after = gone_after
        self.socks: list[zmq.Socket] = []  # the SUB sockets this inbox reads, subscribed to `subscriptions`
        self.streams: dict[str, dict[str, Stream]] = {}  # sender -> topic -> what we know of it
        self.liveness = Liveness(gone_after)
        self.missed: dict[str, int] = {}  # sender -> messages of it we never got
        self.gaps = 0  # gaps counted so far, all senders
        self.asked: dict[str, dict[str, float]] = {}  # sender -> topic -> when we last asked for its state
        self.tombstones: OrderedDict[str, dict[str, Stream]] = OrderedDict()  # forgotten senders' streams

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
            if not self._unwanted(topic_of(frames)):  # another topic's body need not be ours
                warnings.warn("%s dropped a malformed message: %s", self.label, exc)
            return None
        if self.policy and (refused := self.policy.refuses(peer or "?", message.sender, message.topic)):
            warnings.warn("%s dropped a message on '%s': %s", self.label, message.topic, refused)
            return None
        if self.tombstones:
            self._revive(message.sender)
        if message.topic == HEARTBEAT_TOPIC:
            return self._heartbeat(message)
        if self.wanted and message.topic not in self.wanted:  # as _unwanted, inline: every message passes here
            return None
        stream = self.streams.get(message.sender, {}).get(message.topic)
        if stream and (message.boot, message.seq) <= (stream.boot, stream.seq):  # a later boot wins, then seq
            self._hear(message.sender)  # a re-sent last value we already have: nothing new, but a sign of life
            return None
        self._hear(message.sender)
        if stream is None or message.boot > stream.boot:  # a new sender, or a restarted one: its seq starts afresh
            self.streams.setdefault(message.sender, {})[message.topic] = Stream(message.boot, message.seq)
        else:
            if message.seq > stream.counted + 1:  # a gap: what came between is missed
                self._count(message.sender, message.seq - stream.counted - 1)
            stream.seq = stream.counted = message.seq
        return message, message.body if self.body_type else None

    def _unwanted(self, topic: str | None) -> bool:
        """Whether `topic` is not ours though subscribed to: subscriptions match prefixes, 'light' ~ 'lightning'."""
        return topic is not None and bool(self.wanted) and topic not in self.wanted and topic != HEARTBEAT_TOPIC

    def _heartbeat(self, message: Message) -> tuple[Message, None] | None:
        topic = message.body.get("for")
        if not isinstance(topic, str):
            warnings.warn("%s dropped a malformed heartbeat from %s: no 'for' topic", self.label, message.sender)
            return None
        if self.wanted and topic not in self.wanted and HEARTBEAT_TOPIC not in self.wanted:
            return None
        self._hear(message.sender)
        stream = self.streams.get(message.sender, {}).get(topic)
        if stream and message.boot == stream.boot and message.seq > stream.counted:
            self._count(message.sender, message.seq - stream.counted)
            stream.counted = message.seq
            self._resync(topic)
        elif (
            (stream is None or message.boot > stream.boot or stream.seq == 0)
            and message.seq > 0
            and self._may_ask(message.sender, topic)  # once per `gone_after`: the re-send may be on its way
        ):
            self._resync(topic)  # it has a state we do not hold: we joined, or came back, after it was sent
        return message, None

    def _may_ask(self, sender: str, topic: str) -> bool:
        asked = self.asked.setdefault(sender, {})
        now = time.monotonic()
        if now - asked.get(topic, -self.gone_after) < self.gone_after:
            return False
        asked[topic] = now
        return True

    def _resync(self, topic: str) -> None:
        """The state we hold of `topic` may be stale: a new subscription has every publisher re-send theirs."""
        prefix = topic if self.wanted else ""
        for sock in self.socks:
            sock.unsubscribe(prefix)
            sock.subscribe(prefix)

    def _revive(self, sender: str) -> None:
        """A sender we forgot is back: what it sent meanwhile counts as missed, but its state is new to us."""
        if sender not in self.liveness and (earlier := self.tombstones.pop(sender, None)):
            self.streams[sender] = {topic: Stream.resumed(stream) for topic, stream in earlier.items()}

    def _hear(self, sender: str) -> None:
        if evicted := self.liveness.hear(sender):
            self._forget(evicted)

    def _count(self, sender: str, missed: int) -> None:
        """A gap of `missed` (> 0) messages from `sender`: counted, and one log line."""
        self.gaps += 1
        self.missed[sender] = self.missed.get(sender, 0) + missed
        log.warning("%s missed %d messages from %s", self.label, missed, sender)

    def _forget(self, sender: str) -> None:
        self.liveness.drop(sender)
        self.streams.pop(sender, None)
        self.missed.pop(sender, None)
        self.asked.pop(sender, None)

    def expire(self) -> list[str]:
        """The senders not heard for `gone_after` seconds, now forgotten."""
        gone = self.liveness.gone()
        for sender in gone:
            self.tombstones[sender] = self.streams.get(sender, {})  # to count what it sends while forgotten
            if len(self.tombstones) > MAX_SENDERS:
                self.tombstones.popitem(last=False)
            self._forget(sender)
        return gone
