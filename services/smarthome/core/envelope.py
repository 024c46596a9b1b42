"""The one message envelope every service speaks: [topic, JSON] as a two-frame ZeroMQ message.

Frame 1 is the topic (UTF-8), so SUB sockets filter on it without parsing JSON.
Frame 2 is JSON: {"sender", "boot", "seq", "ts", "body"}
  sender  who published (service@host, so scaled instances differ)
  boot    the sender's start time in ns: a restarted sender's seq starts again at 1 and is still newer
  seq     per-sender counter, increasing; (boot, seq) orders one sender's messages and spots duplicates
  ts      wall-clock send time in seconds
  body    the payload, a JSON object whose shape depends on the topic
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from smarthome.core.schema import explain

HEARTBEAT_TOPIC = "heartbeat"  # every publisher's 'I am alive', once per heartbeat_interval

Sender = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Counter = Annotated[int, msgspec.Meta(ge=0)]


class _Json(msgspec.Struct, frozen=True):
    """Frame 2. Unknown fields are ignored, so newer senders can add fields without breaking older readers."""

    sender: Sender
    boot: Counter
    seq: Counter
    ts: float
    body: dict[str, Any]


class Message(msgspec.Struct, frozen=True):
    topic: str
    sender: str
    boot: int
    seq: int
    ts: float
    body: dict[str, Any]

    @property
    def order(self) -> tuple[int, int]:
        """Sort key within one sender: a later boot wins, then a higher seq."""
        return (self.boot, self.seq)


class EnvelopeError(ValueError):
    """Why a received message was rejected, in one line for the log."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Json)


class _SenderOnly(msgspec.Struct):
    sender: Sender


_sender_decoder = msgspec.json.Decoder(_SenderOnly)


def sender_of(payload: bytes) -> str | None:
    """Just the sender of frame 2 (cheap: the rest is skipped), or None if it has none."""
    try:
        return _sender_decoder.decode(payload).sender
    except (msgspec.DecodeError, RecursionError):  # msgspec raises RecursionError on deeply nested JSON
        return None


def encode(message: Message) -> list[bytes]:
    payload = _Json(message.sender, message.boot, message.seq, message.ts, message.body)
    return [message.topic.encode(), _encoder.encode(payload)]


def decode(frames: list[bytes]) -> Message:
    """The Message in `frames`, or EnvelopeError saying what is wrong with them."""
    if len(frames) != 2:
        raise EnvelopeError(f"expected 2 frames [topic, json], got {len(frames)}")
    try:
        topic = frames[0].decode()
    except UnicodeDecodeError:
        raise EnvelopeError("topic frame is not UTF-8") from None
    try:
        j = _decoder.decode(frames[1])
    except msgspec.ValidationError as exc:
        problem, key = explain(exc)
        raise EnvelopeError(f"topic '{topic}': {problem}" + (f" at '{key}'" if key else "")) from None
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"topic '{topic}': not valid JSON ({exc})") from None
    return Message(topic, j.sender, j.boot, j.seq, j.ts, j.body)


# --- bodies: what frame 2's "body" holds, per kind of topic ---


class LightState(msgspec.Struct, frozen=True):
    state: Literal["ON", "OFF"]


class ApplianceStatus(msgspec.Struct, frozen=True):
    status: bool  # true = ready (coffee made, toast done)


class MirrorView(msgspec.Struct, frozen=True):
    view: dict[str, str]  # label -> "ready" | "idle" | "unknown", e.g. {"coffee": "ready", "toast@1a2b": "idle"}
