"""The one message envelope every service speaks: [topic, JSON] as a two-frame ZeroMQ message.

Its fields and what they mean are docs/protocol.md's rules M1-M8; this module encodes and checks them.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from smarthome.core.problems import explain

HEARTBEAT_TOPIC = "heartbeat"  # every publisher's 'I am alive', once per heartbeat_interval

Sender = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
SENDER = re.compile(r"^[A-Za-z0-9_.:+-]{1,100}@[A-Za-z0-9_.:+-]{1,100}$")  # service@instance, nothing to escape
Counter = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
TOPIC_NAME = r"[a-z][a-z0-9_-]{0,63}"  # a topic name: config, envelope, broker and dashboard all take this one
TOPIC = re.compile(rf"^{TOPIC_NAME}$")
MAX_BODY_DEPTH = 8  # our bodies are flat; a deeper one is an attack on whoever walks it later
MAX_VIEW_LABELS = 256  # labels in the mirror's view: its topics x max_instances, with room
MAX_LABEL_CHARS = 165  # one label: topic@instance, 64 + 1 + 100
Life = Annotated[int, msgspec.Meta(ge=1, lt=2**53)]  # [M4] exact in every JSON reader, a browser's too


Body = TypeVar("Body")


class _Json(msgspec.Struct, Generic[Body], frozen=True):
    """Frame 2. Unknown fields are ignored, so newer senders can add fields without breaking older readers."""

    sender: Sender
    life: Life
    seq: Counter
    ts: Annotated[float, msgspec.Meta(ge=0, le=2**40)]  # finite: no NaN or infinity reaches a browser
    body: Body


class Message(msgspec.Struct, frozen=True):
    topic: str
    sender: str
    life: int
    seq: int
    ts: float
    body: Any  # a JSON object as a dict, or the body type the reader asked for (see decode)


class EnvelopeError(ValueError):
    """Why a received message was rejected, in one line for the log."""


_encoder = msgspec.json.Encoder()


@functools.cache
def _decoder(body_type: type | None) -> msgspec.json.Decoder:
    """Frame 2's decoder with the body as `body_type` (None: a dict), built once per type."""
    return msgspec.json.Decoder(_Json[body_type or dict[str, Any]])


class _For(msgspec.Struct, frozen=True):
    topic: str = msgspec.field(name="for")


class Head(msgspec.Struct, frozen=True):
    """What the broker reads of a message, its body skipped: enough for the rules A, L, G and C."""

    sender: Sender
    life: Life
    seq: Counter


class _HeartbeatHead(Head, frozen=True):
    body: _For


_head = msgspec.json.Decoder(Head).decode
_heartbeat_head = msgspec.json.Decoder(_HeartbeatHead).decode


def decode_head(frames: list[bytes]) -> tuple[str, str, Head]:
    """(topic, the topic it concerns, head) of `frames`, or EnvelopeError saying why [M8]. A message concerns
    its own topic, a heartbeat the one it is `for` [K5]; the body is skipped (a heartbeat's `for` apart)."""
    topic = topic_of(frames)
    if topic is None:
        raise EnvelopeError("not [topic, json] with a topic name")
    try:
        if topic == HEARTBEAT_TOPIC:
            beat = _heartbeat_head(frames[1])
            head, concerns = beat, beat.body.topic
        else:
            head, concerns = _head(frames[1]), topic
    except msgspec.ValidationError as exc:
        problem, key = explain(exc)
        raise EnvelopeError(f"topic '{topic}': {problem}" + (f" at '{key}'" if key else "")) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # deep JSON; a string that is not UTF-8
        raise EnvelopeError(f"topic '{topic}': not valid JSON") from None
    if not _is_sender(head.sender):
        raise EnvelopeError(f"topic '{topic}': sender {head.sender[:80]!r} is not service@instance")
    return topic, concerns, head


def encode(message: Message) -> list[bytes]:
    payload = _Json(message.sender, message.life, message.seq, message.ts, message.body)
    return [message.topic.encode(), _encoder.encode(payload)]


@functools.lru_cache(maxsize=1024)
def _topic(frame: bytes) -> str | None:
    """Frame 1 as a topic name, or None if it is not one (cached: a service hears few topics, over and over)."""
    topic = frame.decode(errors="replace")
    return topic if TOPIC.match(topic) else None


@functools.lru_cache(maxsize=1024)
def _is_sender(sender: str) -> bool:
    return SENDER.match(sender) is not None


def topic_of(frames: list[bytes]) -> str | None:
    """The topic `frames` carry, or None if they are not [topic, json] with a topic name (cheap: cached)."""
    return _topic(frames[0]) if len(frames) == 2 else None


def decode(frames: list[bytes], body_type: type[msgspec.Struct] | None = None) -> Message:
    """The Message in `frames`, or EnvelopeError saying what is wrong with them.

    With `body_type` the body is decoded straight into it (a heartbeat's stays a dict): only what the type
    allows is ever built. Without, the body is a dict, refused if nested deeper than MAX_BODY_DEPTH.
    """
    if len(frames) != 2:
        raise EnvelopeError(f"expected 2 frames [topic, json], got {len(frames)}")
    topic = _topic(frames[0])
    if topic is None:
        raise EnvelopeError(f"not a topic name: {frames[0].decode(errors='replace')[:80]!r}")
    if topic == HEARTBEAT_TOPIC:
        body_type = None
    try:
        j = _decoder(body_type).decode(frames[1])
    except msgspec.ValidationError as exc:
        problem, key = explain(exc)
        raise EnvelopeError(f"topic '{topic}': {problem}" + (f" at '{key}'" if key else "")) from None
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"topic '{topic}': not valid JSON ({exc})") from None
    except RecursionError:
        raise EnvelopeError(f"topic '{topic}': JSON nested too deeply") from None
    except UnicodeDecodeError:  # msgspec reads a string's bytes as UTF-8 only when it makes the string
        raise EnvelopeError(f"topic '{topic}': not valid JSON (a string that is not UTF-8)") from None
    if not _is_sender(j.sender):
        raise EnvelopeError(f"topic '{topic}': sender {j.sender[:80]!r} is not service@instance")
    # Every JSON object or array has its own bracket (strings can only add more): with two, the envelope's and
    # the body's, the body is flat, as nearly every body is, and is not walked.
    if body_type is None and frames[1].count(b"{") + frames[1].count(b"[") > 2 and not _shallow(j.body):
        raise EnvelopeError(f"topic '{topic}': body nested deeper than {MAX_BODY_DEPTH}")
    return Message(topic, j.sender, j.life, j.seq, j.ts, j.body)


def _shallow(body: dict[str, Any]) -> bool:
    """Whether no container in `body` is nested deeper than MAX_BODY_DEPTH (iterative: no recursion to exhaust)."""
    pending: list[tuple[Any, int]] = [(body, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_BODY_DEPTH:
            return False
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


# --- bodies: what frame 2's "body" holds, per kind of topic ---


class LightState(msgspec.Struct, frozen=True):
    state: Literal["ON", "OFF"]


class ApplianceStatus(msgspec.Struct, frozen=True):
    status: bool  # true = ready (coffee made, toast done)


Label = Annotated[str, msgspec.Meta(max_length=MAX_LABEL_CHARS)]


class MirrorView(msgspec.Struct, frozen=True):
    # label -> "ready" | "idle" | "unknown", e.g. {"coffee": "ready", "toast@1a2b": "idle"}; bounded, so that
    # no number of instances makes the view too big to send
    view: Annotated[dict[Label, Literal["ready", "idle", "unknown"]], msgspec.Meta(max_length=MAX_VIEW_LABELS)]


def retyped(frames: list[bytes], body_type: type[msgspec.Struct]) -> list[bytes]:
    """`frames` as they are kept: the body in its typed form, unknown fields dropped (EnvelopeError if it is
    not of `body_type`). What a cache keeps is what its readers will accept, and no bigger."""
    return encode(decode(frames, body_type))
