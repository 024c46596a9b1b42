"""The log lines a loop holds back until its messages are out (same lines, same order, errors at once), and the
warnings about bad input, which a flood cannot multiply."""

import io
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
from smarthome.core.config import load_config
from smarthome.core.envelope import HEARTBEAT_TOPIC, Message, encode
from smarthome.core.keys import Policy
from smarthome.core.logs import (
    FORMAT_ENV,
    LEVEL_ENV,
    LINES_PER_SECOND,
    PEERS_COUNTED,
    HoldingLogger,
    JsonFormatter,
    LimitedLines,
    TextFormatter,
    escape,
    held_lines,
    peer_warnings,
    setup_logging,
)
from smarthome.core.messaging import Subscriber
from smarthome.core.sockets import guarded

from tests.support.base import SHIPPED_CONFIG
from tests.support.processes import loopback_config


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level


def stream_logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter(tracebacks=False))
    root = logging.getLogger()
    root.handlers, root.level = [handler], logging.INFO
    return logging.getLogger("smarthome.test"), out


def test_held_lines_are_written_in_order_at_each_flush_and_at_the_end() -> None:
    log, out = stream_logger()
    before = logging.getLogger().handlers
    with held_lines() as lines:
        log.info("first")
        log.info("second")
        assert out.getvalue() == ""  # held: the message they tell of is still being sent
        assert lines.held_for() > 0
        lines.flush()
        assert lines.held_for() == 0
        assert [line.split()[-1] for line in out.getvalue().splitlines()] == ["first", "second"]
        log.info("third")
    assert out.getvalue().splitlines()[-1].endswith("third")  # written when the loop ends, however it ends
    assert logging.getLogger().handlers == before


def test_our_loggers_hold_their_lines_and_other_libraries_loggers_are_left_as_they_are() -> None:
    log, out = stream_logger()
    theirs = logging.getLogger("otherlib.worker")  # a library of the process, not ours
    ours = [logging.getLogger("smarthome"), logging.getLogger("smarthome.roles.appliance")]  # the core's, a role's
    for logger in ours:  # as made at import, whatever ran before in this process
        logger.__class__ = logging.Logger
    with held_lines():
        log.info("ours")
        theirs.info("theirs")
        assert out.getvalue().split()[-1] == "theirs"  # written at once; ours is held
    assert out.getvalue().split()[-1] == "ours"
    assert type(theirs) is type(logging.getLogger("smarthomely")) is logging.Logger
    assert all(isinstance(logger, HoldingLogger) for logger in ours)


def test_errors_are_written_at_once_after_what_was_held() -> None:
    log, out = stream_logger()
    with held_lines():
        log.info("routine")
        log.error("broken")
        assert [line.split()[-1] for line in out.getvalue().splitlines()] == ["routine", "broken"]


def test_a_held_line_carries_the_time_of_its_call_and_exceptions_are_not_held() -> None:
    log, out = stream_logger()
    created: list[float] = []
    logging.getLogger().handlers[0].addFilter(lambda record: created.append(record.created) or True)
    with held_lines() as lines:
        before = time.time()
        log.info("routine")
        after = time.time()
        while time.time() == after:  # the flush comes strictly later than the call
            pass
        lines.flush()
        assert before <= created[0] <= after
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
        assert out.getvalue().splitlines()[-1].endswith("failed: ValueError: bad")


def test_a_held_line_is_stamped_with_the_second_and_millisecond_of_its_call() -> None:
    log, out = stream_logger()
    with held_lines():  # our loggers hold lines from now on
        pass
    assert isinstance(log, HoldingLogger)
    log.write(logging.INFO, "%s ready", ("toast",), 1_767_225_599_999_000_000)  # ns: the last ms of 2025
    assert out.getvalue() == "2025-12-31T23:59:59.999Z INFO    toast ready\n"


def test_an_exception_stays_on_its_line_and_its_traceback_follows_at_level_debug_only() -> None:
    try:
        raise ValueError("two\n  lines")
    except ValueError as exc:
        error = exc
    raised = logging.makeLogRecord({"msg": "failed", "levelname": "ERROR"})
    raised.exc_info = (ValueError, error, error.__traceback__)
    unraised = logging.makeLogRecord({"msg": "refused", "levelname": "WARNING"})
    unraised.exc_info = (KeyError, KeyError("toast"), None)  # an exception made, never raised: no traceback
    for record, said in ((raised, "failed: ValueError: two lines"), (unraised, "refused: KeyError: 'toast'")):
        for formatter in (TextFormatter(tracebacks=False), JsonFormatter(tracebacks=False)):
            text = formatter.format(record)
            line = json.loads(text)["message"] if isinstance(formatter, JsonFormatter) else text.split(" ", 2)[2]
            assert line.strip() == said and "Traceback" not in text
    debug_text = TextFormatter(tracebacks=True).format(raised)
    assert debug_text.splitlines()[0].endswith("failed: ValueError: two lines")
    assert debug_text.splitlines()[1] == "Traceback (most recent call last):"
    assert json.loads(JsonFormatter(tracebacks=True).format(raised))["traceback"].startswith("Traceback")


@pytest.mark.parametrize("level, debug", [("debug", True), ("DEBUG", True), ("info", False)])
def test_the_log_goes_to_stderr_at_its_level_with_tracebacks_at_debug_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], level: str, debug: bool
) -> None:
    """setup_logging replaces whatever handlers the process had (here pytest's)."""
    monkeypatch.setenv(LEVEL_ENV, level)
    monkeypatch.setenv(FORMAT_ENV, "TEXT")
    setup_logging()
    log = logging.getLogger("smarthome.test")
    log.debug("details")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    written = capsys.readouterr().err
    assert ("details" in written) == debug
    [failed] = [line for line in written.splitlines() if "failed" in line]
    assert failed.endswith("ERROR   failed: ValueError: bad")
    assert ("Traceback (most recent call last):" in written) == debug


def test_lines_beyond_ten_a_second_of_one_peer_are_counted_and_told_with_its_next_line_that_gets_through() -> None:
    log, out = stream_logger()
    now = 100.0
    limited = LimitedLines(log, clock=lambda: now)  # LINES_PER_SECOND by default
    for i in range(LINES_PER_SECOND + 5):
        limited.log("bad %d", i, peer="toaster")
    limited.log("other %d", 1, peer="web")  # another peer's line is not held back by the flood
    now = 101.2
    for i in range(100, 100 + LINES_PER_SECOND + 1):  # a new second: a whole allowance again
        limited.log("bad %d", i, peer="toaster")
    said = [line.split("WARNING ", 1)[1].strip() for line in out.getvalue().splitlines()]
    assert said == [
        *(f"bad {i}" for i in range(LINES_PER_SECOND)),
        "other 1",
        "bad 100 (and 5 more like it held back)",
        *(f"bad {i}" for i in range(101, 100 + LINES_PER_SECOND)),
    ]


def test_the_peers_counted_apart_are_bounded() -> None:
    log, out = stream_logger()
    limited = LimitedLines(log, level=logging.INFO, clock=lambda: 5.0)
    for peer in range(PEERS_COUNTED + 100):
        limited.log("hello", peer=peer)
    assert len(limited.peers) == PEERS_COUNTED and next(iter(limited.peers)) == 100
    assert out.getvalue().count("INFO    hello") == PEERS_COUNTED + 100


@pytest.mark.parametrize("control", ["\n", "\r", "\x1b", "\x85", "\x9b", "\u2028", "\u2029", "\x7f"])
def test_no_character_a_peer_sends_can_end_a_line(control: str) -> None:
    log, out = stream_logger()
    log.warning("dropped a message from %s", f"toaster@x{control}2026-01-01T00:00:00.000Z INFO    forged")
    assert len(out.getvalue().splitlines()) == 1
    assert control not in out.getvalue().rstrip("\n")


def test_a_handler_that_raises_drops_that_message_with_one_line_and_nothing_else() -> None:
    _, out = stream_logger()

    def handler(frames: list[bytes]) -> None:
        raise ValueError(f"cannot read {frames[0]!r}")

    guarded("MIRROR", handler)([b"coffee"])
    assert out.getvalue().split("WARNING ", 1)[1].strip() == (
        "MIRROR dropped a message it could not handle: ValueError: cannot read b'coffee'"
    )


def test_a_subscriber_drops_what_is_not_its_own_and_says_so_only_of_what_it_asked_for(tmp_path: Path) -> None:
    """[K1, K5] 'light' subscribed also matches 'lightning': that is dropped in silence, malformed or not; a
    subscriber of everything drops a topic nobody declared with a line naming it; heartbeats count only for
    topics it receives, and one without a topic is a line."""
    _, out = stream_logger()
    config = load_config(loopback_config(tmp_path))

    def heard(subscriber: Subscriber, topic: str, body: object) -> bool:
        return subscriber.accept(encode(Message(topic, "light-switch@a", 7, 1, time.time(), body))) is not None

    mirror = Subscriber("MIRROR", config, ["light"], None)
    assert not heard(mirror, "lightning", {"state": "ON"})
    assert mirror.accept([b"lightning", b"not json"]) is None
    assert not heard(mirror, HEARTBEAT_TOPIC, {"for": "toast"})  # not a topic it receives
    assert out.getvalue() == ""
    assert heard(mirror, HEARTBEAT_TOPIC, {"for": "light"}) and heard(mirror, "light", {"state": "ON"})
    everything = Subscriber("WEB", config, [], None)
    assert not heard(everything, "lightning", {"state": "ON"})
    assert not heard(everything, HEARTBEAT_TOPIC, {"to": "light"})
    assert mirror.accept([b"light", b"not json"]) is None
    lines = [line.split("WARNING ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "WEB dropped a message on 'lightning': not a declared topic",
        "WEB dropped a malformed heartbeat from light-switch@a: no 'for' topic",
        "MIRROR dropped a malformed message: topic 'light': not valid JSON (JSON is malformed: invalid character "
        "(byte 4))",
    ]


def test_one_peers_flood_of_bad_messages_hides_no_line_of_anothers_at_a_subscriber(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each line a subscriber writes about what a peer sent has its allowance per peer (its key): a flood of
    every kind from the coffee maker's key leaves the toaster's own lines, one of each kind, as they are."""
    monkeypatch.setattr(peer_warnings, "peers", OrderedDict())  # this test's allowances: no other test's spent
    _, out = stream_logger()
    config = load_config(SHIPPED_CONFIG)  # curve: true, so who may say what is checked
    mirror = Subscriber("MIRROR", config, [], None, Policy(config))

    def bad(peer: str, state: str, seq: int) -> None:
        sender = f"{peer}@x"
        for frames in (
            [state.encode(), b"{" * seq],  # malformed
            encode(Message(f"{state}ing", sender, 1, seq, time.time(), {"status": True})),  # undeclared
            encode(Message("light", "light-switch@evil", 1, seq, time.time(), {"state": "OFF"})),  # not theirs
            encode(Message(HEARTBEAT_TOPIC, sender, 1, seq, time.time(), {"to": state})),  # a heartbeat of nothing
            encode(Message(HEARTBEAT_TOPIC, sender, 1, seq, time.time(), {"for": "light"})),  # of another's
        ):
            assert mirror.accept(frames, peer) is None

    for seq in range(1, 4 * LINES_PER_SECOND):
        bad("coffee-maker", "coffee", seq)
    bad("toaster", "toast", 1)
    said = [line.split("WARNING ", 1)[1] for line in out.getvalue().splitlines()]
    assert said[-5:] == [
        "MIRROR dropped a malformed message: topic 'toast': not valid JSON (Input data was truncated)",
        "MIRROR dropped a message on 'toasting': not a declared topic",
        "MIRROR dropped a message on 'light': toaster sent as light-switch@evil",
        "MIRROR dropped a malformed heartbeat from toaster@x: no 'for' topic",
        "MIRROR dropped a heartbeat for 'light': toaster may not publish 'light'",
    ]
    assert len(said) == LINES_PER_SECOND + 5 or said[LINES_PER_SECOND].endswith("held back)")  # a second turned


def test_one_service_refused_instances_do_not_hide_another_services(tmp_path: Path) -> None:  # [A2]
    """Refusals are limited per service: a flood of invented toasters leaves room for the coffee maker's line."""
    _, out = stream_logger()
    config = load_config(loopback_config(tmp_path, max_instances=1))
    subscriber = Subscriber("MIRROR", config, ["coffee", "toast"], None)
    toasters = 3 * LINES_PER_SECOND + 1  # more than two seconds' allowance: the flood may span a second's turn
    flood = [("toaster", "toast")] * toasters + [("coffee-maker", "coffee")] * 2
    for instance, (service, topic) in enumerate(flood):
        heartbeat = Message(HEARTBEAT_TOPIC, f"{service}@{instance}", 7, 0, time.time(), {"for": topic})
        subscriber.accept(encode(heartbeat))
    said = out.getvalue()
    assert said.count("MIRROR refused toaster@") <= 2 * LINES_PER_SECOND, said  # held back past its share
    assert "MIRROR refused coffee-maker@" in said, said  # the coffee maker's own share


ESCAPED = {
    "plain words and café ☕ stay as they are": "plain words and café ☕ stay as they are",
    "a\nforged line": "a\\nforged line",
    "\x1b[31mred\x00": "\\x1b[31mred\\x00",
    "C:\\home\\light 'on'": "C:\\home\\light 'on'",  # printable, backslash and quotes too: as they are
    "x" * 12: "x" * 12,  # exactly the limit: kept whole
    "x" * 13: "x" * 12 + "…",
    "x" * 11 + "\n": "x" * 11 + "\\n"[:1] + "…",  # escaped past the limit: cut all the same
}


@pytest.mark.parametrize("text", ESCAPED, ids=range(len(ESCAPED)))
def test_escape_makes_text_one_printable_line_of_at_most_its_limit(text: str) -> None:
    limit = 12 if text.startswith("x") else 200
    assert escape(text, limit) == ESCAPED[text]


def test_escape_cuts_at_200_characters_unless_told() -> None:
    assert escape("y" * 200) == "y" * 200 and escape("y" * 201) == "y" * 200 + "…"
