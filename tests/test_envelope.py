"""The envelope codec: round trip, and one clear reason for every kind of malformed message."""

from __future__ import annotations

import pytest
from smarthome.core.envelope import (
    MAX_VIEW_LABELS,
    EnvelopeError,
    Head,
    LightState,
    Message,
    MirrorView,
    decode,
    decode_head,
    encode,
    retyped,
    topic_of,
)


def test_round_trip() -> None:
    message = Message("coffee", "coffee-maker@host", 2**53 - 1, 7, 1732680000.25, {"status": True})
    frames = encode(message)
    assert frames[0] == b"coffee"
    assert decode(frames) == message


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    frames = [b"light", b'{"sender":"s@h","life":1,"seq":1,"ts":0,"body":{},"new":1}']
    assert decode(frames).seq == 1


def test_a_typed_body_keeps_only_its_fields_and_a_heartbeat_stays_a_dict() -> None:
    nested = b"[" * 20 + b"]" * 20  # deeper than a JSON-object body may nest: refused without a type
    frames = [b"light", b'{"sender":"s@h","life":1,"seq":1,"ts":0,"body":{"state":"ON","x":' + nested + b"}}"]
    assert decode(frames, LightState).body == LightState("ON")
    with pytest.raises(EnvelopeError, match="body nested deeper than 8"):
        decode(frames)
    heartbeat = [b"heartbeat", b'{"sender":"s@h","life":1,"seq":1,"ts":0,"body":{"for":"light"}}']
    assert decode(heartbeat, LightState).body == {"for": "light"}


GOOD = b'{"sender":"s@h","life":1,"seq":1,"ts":0.5,"body":{"state":"ON"}}'
REJECTED = {
    "one frame": ([b"light"], "expected 2 frames [topic, json], got 1"),
    "three frames": ([b"light", GOOD, b"x"], "expected 2 frames [topic, json], got 3"),
    "topic not UTF-8": ([b"\xff", GOOD], "not a topic name: '\ufffd'"),
    "topic with a newline": ([b"light\nINFO forged", GOOD], "not a topic name: 'light\\nINFO forged'"),
    "sender not service@instance": (
        [b"light", b'{"sender":"x\\u001b[2J","life":1,"seq":1,"ts":0,"body":{}}'],
        "topic 'light': sender 'x\\x1b[2J' is not service@instance",
    ),
    "a long sender, cut": (
        [b"light", b'{"sender":"' + b"s" * 81 + b'@","life":1,"seq":1,"ts":0,"body":{}}'],
        f"topic 'light': sender '{'s' * 80}' is not service@instance",
    ),
    "JSON nested too deeply": (  # msgspec raises RecursionError here, not a DecodeError
        [b"light", b'{"sender":"s@h","life":1,"seq":1,"ts":0,"body":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}"],
        "topic 'light': JSON nested too deeply",
    ),
    "body nested too deeply": (
        [b"light", b'{"sender":"s@h","life":1,"seq":1,"ts":0,"body":{"a":' + b"[" * 20 + b"]" * 20 + b"}}"],
        "topic 'light': body nested deeper than 8",
    ),
    "life beyond 53 bits": (  # [M4] a browser's JSON.parse would round it, and two lives could look alike
        [b"light", b'{"sender":"s@h","life":9007199254740992,"seq":1,"ts":0,"body":{}}'],
        "topic 'light': expected 'int' <= 9007199254740991 at 'life'",
    ),
    "life 0": (
        [b"light", b'{"sender":"s@h","life":0,"seq":1,"ts":0,"body":{}}'],
        "topic 'light': expected 'int' >= 1 at 'life'",
    ),
    "seq beyond 64 bits": (
        [b"light", b'{"sender":"s@h","life":1,"seq":18446744073709551616,"ts":0,"body":{}}'],
        "topic 'light': expected 'int' <= 9223372036854775807 at 'seq'",
    ),
    "not JSON": ([b"light", b"light is ON"], "topic 'light': not valid JSON"),
    "JSON not an object": ([b"light", b"[1, 2]"], "topic 'light': expected 'object', got 'array'"),
    "missing field": ([b"light", b'{"sender":"s@h","life":1,"ts":0,"body":{}}'], "topic 'light': missing key 'seq'"),
    "wrong type": (
        [b"light", b'{"sender":"s@h","life":1,"seq":"1","ts":0,"body":{}}'],
        "topic 'light': expected 'int', got 'str' at 'seq'",
    ),
    "negative seq": (
        [b"light", b'{"sender":"s@h","life":1,"seq":-1,"ts":0,"body":{}}'],
        "topic 'light': expected 'int' >= 0 at 'seq'",
    ),
    "empty sender": (
        [b"light", b'{"sender":"","life":1,"seq":1,"ts":0,"body":{}}'],
        "topic 'light': expected 'str' of length >= 1 at 'sender'",
    ),
    "a sender not UTF-8": (
        [b"light", b'{"sender":"\xff\xfe","life":1,"seq":1,"ts":0,"body":{}}'],
        "topic 'light': not valid JSON (a string that is not UTF-8)",
    ),
    "body not an object": (
        [b"light", b'{"sender":"s@h","life":1,"seq":1,"ts":0,"body":"ON"}'],
        "topic 'light': expected 'object', got 'str' at 'body'",
    ),
}


HEAD_REFUSED = {  # what the broker reads of a message, its body skipped [M8]
    "three frames": ([b"light", b"{}", b""], "not [topic, json] with a topic name"),
    "not a topic": ([b"Light!", b"{}"], "not [topic, json] with a topic name"),
    "not JSON": ([b"light", b"{"], "topic 'light': not valid JSON"),
    "no seq": ([b"light", b'{"sender":"s@h","life":1}'], "topic 'light': missing key 'seq'"),
    "heartbeat for nothing": (
        [b"heartbeat", b'{"sender":"s@h","life":1,"seq":1,"body":{}}'],
        "topic 'heartbeat': missing key 'for' at 'body'",
    ),
    "no instance": (
        [b"light", b'{"sender":"switch","life":1,"seq":1}'],
        "topic 'light': sender 'switch' is not service@instance",
    ),
    "a sender not UTF-8": ([b"light", b'{"sender":"\xff\xfe","life":1,"seq":1}'], "topic 'light': not valid JSON"),
    "a long sender, cut": (
        [b"light", b'{"sender":"' + b"s" * 81 + b'@","life":1,"seq":1}'],
        f"topic 'light': sender '{'s' * 80}' is not service@instance",
    ),
}


@pytest.mark.parametrize("case", HEAD_REFUSED, ids=list(HEAD_REFUSED))
def test_the_head_the_broker_reads_is_refused_with_its_reason(case: str) -> None:
    frames, reason = HEAD_REFUSED[case]
    assert topic_of(frames) == (frames[0].decode() if case not in ("three frames", "not a topic") else None)
    with pytest.raises(EnvelopeError) as refusal:
        decode_head(frames)
    assert str(refusal.value) == reason


def test_a_head_is_its_topic_what_it_concerns_and_who_sent_it() -> None:
    beat = encode(Message("heartbeat", "s@h", 5, 7, 0.0, {"for": "toast"}))
    topic, concerns, head = decode_head(beat)
    assert (topic, concerns, head.sender, head.life, head.seq) == ("heartbeat", "toast", "s@h", 5, 7)
    assert decode_head(encode(Message("light", "s@h", 5, 8, 0.0, {}))) == ("light", "light", Head("s@h", 5, 8))


def test_the_mirror_s_view_is_bounded_and_a_kept_body_is_retyped() -> None:
    def view(labels: int) -> list[bytes]:
        body = {"view": {f"toast@{i}": "ready" for i in range(labels)}}
        return encode(Message("mirror", "smart-mirror@h", 1, 1, 0.0, body))

    assert len(decode(view(MAX_VIEW_LABELS), MirrorView).body.view) == MAX_VIEW_LABELS
    with pytest.raises(EnvelopeError, match=f"expected 'object' of length <= {MAX_VIEW_LABELS} at 'body.view'"):
        decode(view(MAX_VIEW_LABELS + 1), MirrorView)
    padded = encode(Message("light", "s@h", 1, 1, 0.0, {"state": "ON", "padding": "x" * 1000}))
    assert retyped(padded, LightState) == encode(Message("light", "s@h", 1, 1, 0.0, {"state": "ON"}))


@pytest.mark.parametrize("case", REJECTED, ids=list(REJECTED))
def test_every_malformed_message_is_rejected_with_its_reason(case: str) -> None:
    frames, reason = REJECTED[case]
    with pytest.raises(EnvelopeError) as error:
        decode(frames)
    assert str(error.value).startswith(reason)
    assert "\n" not in str(error.value)


def nested(depth: int) -> dict:
    body: dict = {}
    for _ in range(depth - 1):
        body = {"a": body}
    return body


def test_a_body_may_nest_eight_objects_deep_and_no_deeper() -> None:
    eight = encode(Message("light", "s@h", 1, 1, 0.0, nested(8)))
    assert decode(eight).body == nested(8)
    nine = encode(Message("light", "s@h", 1, 1, 0.0, nested(9)))
    with pytest.raises(EnvelopeError, match="body nested deeper than 8"):
        decode(nine)
