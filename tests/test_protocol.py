"""docs/protocol.md, rule by rule, on the receiving side as core/protocol.py has it (no sockets: time is passed in).

First one test per rule that carries a story, then a model-based test: Hypothesis drives a Receiver and the
broker's LastValues with random interleavings (messages, heartbeats, losses, copies, re-sends from the cache,
restarts under the same name with the clock anywhere within an hour, two lives at once, senders that leave, the
passing of time) and after every step compares them with a plain reference model and with what the world knows.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from smarthome.core import protocol, sockets
from smarthome.core.protocol import RESYNC_MAX, RETIRED_MAX, Answers, Beat, Kind, LastValues, Receiver
from smarthome.roles import broker
from smarthome.web import forwarder

KINDS = {"light": Kind.STATE, "light-set": Kind.COMMAND}
INTERVAL = 0.5  # heartbeat_interval: not 1, so that a rule that multiplied where it should divide is seen
GONE_AFTER = 3 * INTERVAL
A, B, C = 101, 202, 303  # lives: random in the real thing; their order means nothing [M4]


def receiver(**kwargs: Any) -> Receiver:
    return Receiver(KINDS, GONE_AFTER, INTERVAL, **kwargs)


def asks(r: Receiver, seq: int, start: float, beats: int = 12) -> int:
    """How many of `beats` heartbeats of switch@h's life A, one per interval from `start`, ask again."""
    return sum(r.heartbeat("switch@h", A, "light", seq, now=start + i * INTERVAL) is Beat.ASK for i in range(beats))


# --- the rules, one story each ---


def test_a_heartbeat_of_a_new_life_replaces_the_current_one_whatever_the_lives_are() -> None:  # [L3]
    r = receiver()
    assert r.take("switch@h", B, "light", 5, now=0)
    assert r.heartbeat("switch@h", A, "light", 0, now=0.1) is Beat.TAKEN  # A < B: no order in lives
    assert r.life_of("switch@h") == A
    assert r.take("switch@h", A, "light", 1, now=0.2)  # its seq starts afresh [G3]
    assert not r.take("switch@h", B, "light", 6, now=0.3)  # the life it replaced: dropped [L4]


def test_a_message_of_another_life_waits_for_that_life_to_be_proven_by_a_heartbeat() -> None:  # [L4]
    r = receiver()
    assert r.take("switch@h", A, "light", 7, now=0)
    assert not r.take("switch@h", B, "light", 1, now=0.1)  # an older life's state from a cache, or a new one early
    assert r.life_of("switch@h") == A
    assert r.expire(now=GONE_AFTER + 0.05) == ["switch@h"]  # heard at 0: the drop at 0.1 was no sign of life [L2]
    assert r.take("switch@h", B, "light", 1, now=GONE_AFTER + 0.1)  # not alive: any life is taken [L3]


def test_two_lives_running_at_once_do_not_take_turns_until_one_goes_quiet() -> None:  # [L5]
    r = receiver()
    r.heartbeat("switch@h", A, "light", 1, now=0)
    r.heartbeat("switch@h", B, "light", 1, now=0.1)  # B replaces A, A is retired
    for beat in range(1, 4):
        assert r.heartbeat("switch@h", A, "light", 1, now=beat * INTERVAL) is Beat.DROPPED
        assert r.heartbeat("switch@h", B, "light", 1, now=beat * INTERVAL + 0.1) is not Beat.DROPPED
    assert r.life_of("switch@h") == B
    quiet = 3 * INTERVAL + 0.1 + 2 * INTERVAL  # B went quiet: two intervals since it was heard
    assert r.heartbeat("switch@h", A, "light", 1, now=quiet) is Beat.DROPPED  # not more than two yet
    assert r.heartbeat("switch@h", A, "light", 1, now=quiet + 0.01) is Beat.TAKEN
    assert r.life_of("switch@h") == A


def test_only_the_last_retired_lives_are_remembered() -> None:  # [L5, B]
    r = receiver()
    for life in range(1, RETIRED_MAX + 3):
        r.heartbeat("switch@h", life, "light", 0, now=0)
    assert r.alive["switch@h"].retired == tuple(range(RETIRED_MAX + 1, 1, -1))


def test_a_gap_seen_in_a_heartbeat_is_counted_once_and_the_resent_state_is_still_taken() -> None:  # [G2-G4]
    gaps: list[tuple[str, int]] = []
    r = receiver(on_gap=lambda sender, missed: gaps.append((sender, missed)))
    assert r.heartbeat("switch@h", A, "light", 3, now=0) is Beat.TAKEN  # first contact: nothing missed [G3]
    assert r.take("switch@h", A, "light", 3, now=0)  # the state the heartbeat came with [P2]
    assert r.heartbeat("switch@h", A, "light", 3, now=0.1) is Beat.TAKEN  # the same again: nothing new
    assert r.heartbeat("switch@h", A, "light", 6, now=1) is Beat.TAKEN  # 4, 5 and 6 did not come
    assert not r.take("switch@h", A, "light", 3, now=1.1)  # a copy of what we hold [G2]
    assert r.take("switch@h", A, "light", 5, now=1.2)  # a late 5 (from a cache): taken, not counted again
    assert r.heartbeat("switch@h", A, "light", 6, now=2) is Beat.ASK  # still behind 6 half an interval on [R2]
    assert r.take("switch@h", A, "light", 6, now=2.1)  # the answer
    assert r.take("switch@h", A, "light", 8, now=3)  # 7 is lost
    assert gaps == [("switch@h", 3), ("switch@h", 1)]
    assert r.missed() == {"switch@h": 4} and r.missed_of("switch@h") == 4 and r.missed_of("nobody@h") == 0


def test_a_stream_behind_asks_at_the_next_heartbeat_not_sooner_nor_more_often() -> None:  # [R1, R2]
    r = receiver()
    assert r.heartbeat("switch@h", A, "light", 5, now=0) is Beat.TAKEN  # behind: the state may be on its way
    assert r.heartbeat("switch@h", A, "light", 5, now=0.2 * INTERVAL) is Beat.TAKEN  # (P2 answers every subscriber)
    assert r.heartbeat("switch@h", A, "light", 5, now=0.5 * INTERVAL) is Beat.ASK  # half an interval: it was lost
    assert r.heartbeat("switch@h", A, "light", 5, now=0.9 * INTERVAL) is Beat.TAKEN  # asked 0.4 intervals ago
    assert r.heartbeat("switch@h", A, "light", 5, now=1.0 * INTERVAL) is Beat.ASK


def test_a_stream_behind_asks_at_most_resync_max_times_and_afresh_each_time_it_falls_behind() -> None:  # [R3]
    r = receiver()
    assert asks(r, 5, start=0) == RESYNC_MAX
    assert r.take("switch@h", A, "light", 6, now=10)  # caught up (the publisher moved on meanwhile)
    assert asks(r, 7, start=11) == RESYNC_MAX  # behind again: asking starts afresh
    r.take("switch@h", A, "light", 6, now=20)  # a copy: still behind 7
    assert r.heartbeat("switch@h", A, "light", 7, now=21) is Beat.TAKEN  # and its asks are spent
    assert r.take("switch@h", A, "light", 7, now=22)
    assert asks(r, 7, start=23) == 0  # holding what the heartbeats say: nothing to ask
    assert asks(r, 8, start=30) == RESYNC_MAX


def test_a_sender_forgotten_while_behind_asks_afresh_when_it_is_back() -> None:  # [R3, F1]
    r = receiver()
    assert asks(r, 5, start=0) == RESYNC_MAX
    assert r.expire(now=20) == ["switch@h"]
    assert asks(r, 5, start=21) == RESYNC_MAX


def test_commands_are_counted_but_never_asked_for() -> None:  # [R5, K3]
    r = receiver()
    assert r.take("web@h", A, "light-set", 1, now=0)
    assert all(r.heartbeat("web@h", A, "light-set", 4, now=t) is Beat.TAKEN for t in range(1, 10))
    assert r.missed() == {"web@h": 3}


def test_a_forgotten_life_that_comes_back_has_what_it_sent_meanwhile_counted_and_its_state_taken_anew() -> None:
    r = Receiver(KINDS, gone_after=0, heartbeat_interval=INTERVAL)  # forgets at once: as after a long partition
    assert r.take("switch@h", A, "light", 1, now=0)
    assert r.take("switch@h", A, "light-set", 1, now=0)
    assert r.expire(now=1) == ["switch@h"]  # [F1]
    assert not r.take("switch@h", A, "light-set", 1, now=2)  # a command is never taken twice [G2]...
    assert r.expire(now=3) == ["switch@h"]  # ...though the copy revived it, at 2
    assert r.take("switch@h", A, "light", 5, now=4)  # [F2] the same life: 2, 3 and 4 went meanwhile
    assert r.missed() == {"switch@h": 3}
    assert r.expire(now=5) == ["switch@h"]
    assert r.take("switch@h", A, "light", 5, now=6)  # the state re-sent: forgetting dropped what we held
    assert r.expire(now=7) == ["switch@h"]
    assert r.take("switch@h", B, "light", 1, now=8)  # a new life starts afresh [G3]
    assert r.missed() == {"switch@h": 3}  # summed per sender, over its lives [G5]


def test_senders_past_the_bound_are_forgotten_least_recently_heard_first_and_reported() -> None:  # [F3]
    r = receiver(max_senders=2)
    r.take("a@h", A, "light", 1, now=0)
    r.take("b@h", A, "light", 1, now=1)
    r.heartbeat("a@h", A, "light", 1, now=2)  # heard again: b is now the least recent
    r.take("c@h", A, "light", 1, now=3)
    assert list(r.alive) == ["a@h", "c@h"]
    assert r.expire(now=3) == ["b@h"]  # told at the next expire, like any sender gone
    r.take("d@h", A, "light", 1, now=4)
    r.take("e@h", A, "light", 1, now=5)
    assert list(r.forgotten) == ["a@h", "c@h"]  # remembered: the last 2 forgotten [F2]


def test_the_broker_keeps_states_of_current_lives_only_and_never_a_command() -> None:  # [C1-C3]
    kept = LastValues(receiver())
    light_a, light_b, command = [b"light", b"A"], [b"light", b"B"], [b"light-set", b"x"]
    kept.take("switch@h", A, "light", 1, light_a, now=0)
    kept.take("web@h", A, "light-set", 1, command, now=0)
    assert list(kept.matching("")) == [light_a]  # [C1]
    kept.receiver.heartbeat("switch@h", B, "light", 0, now=1)  # a new life: A's state is no longer handed out
    assert list(kept.matching("light")) == []  # [C3]
    kept.take("switch@h", B, "light", 1, light_b, now=1.1)
    assert list(kept.matching("li")) == [light_b]  # [C2] by prefix
    assert list(kept.matching("toast")) == []
    assert kept.expire(now=10) == ["web@h", "switch@h"]  # least recently heard first
    assert list(kept.matching("")) == []  # [F1]
    assert len(kept) == 0  # and dropped, not only hidden


def test_the_broker_keeps_every_state_topic_of_a_sender_and_no_more_than_its_bounds() -> None:  # [C1, C6]
    two = {"light": Kind.STATE, "mirror": Kind.STATE}
    kept = LastValues(Receiver(two, GONE_AFTER, INTERVAL), max_messages=3, max_bytes=3 * 10)
    frames = {name: [b"light", name.encode().ljust(5)] for name in ("a@h", "b@h", "c@h")}  # 10 bytes each
    kept.take("a@h", A, "light", 1, frames["a@h"], now=0)
    kept.take("a@h", A, "mirror", 1, [b"mirror", b"view"], now=0)  # another topic of the same sender, seq 1 too
    assert len(kept) == 2
    kept.take("b@h", A, "light", 1, frames["b@h"], now=1)
    kept.take("b@h", A, "light", 2, frames["b@h"], now=1)  # replaces its own: no room taken twice
    assert len(kept) == 3
    kept.take("c@h", A, "light", 1, frames["c@h"], now=2)  # 40 bytes, 4 messages: the least recently updated goes
    assert list(kept.matching("light")) == [frames["b@h"], frames["c@h"]]
    assert list(kept.matching("mirror")) == [[b"mirror", b"view"]]


def test_the_broker_counts_the_bytes_it_keeps_through_replacements_and_evictions() -> None:  # [C6]
    kept = LastValues(Receiver(KINDS, GONE_AFTER, INTERVAL), max_messages=100, max_bytes=25)
    for seq in range(1, 20):  # a@h replaces its own state again and again: 10 bytes kept, whatever the count
        kept.take("a@h", A, "light", seq, [b"light", b"aaaaa"], now=0)
    kept.take("b@h", A, "light", 1, [b"light", b"bbbbb"], now=1)  # 20 bytes: room for both
    assert list(kept.matching("")) == [[b"light", b"aaaaa"], [b"light", b"bbbbb"]]
    kept.take("c@h", A, "light", 1, [b"light", b"ccccc"], now=2)  # 30 bytes: the least recently updated goes
    assert list(kept.matching("")) == [[b"light", b"bbbbb"], [b"light", b"ccccc"]]
    kept.take("d@h", A, "light", 1, [b"light", b"d"], now=3)  # 26 bytes: b@h goes too
    assert list(kept.matching("")) == [[b"light", b"ccccc"], [b"light", b"d"]]


def test_a_sender_forgotten_to_keep_the_bound_is_not_handed_out_even_before_it_is_told() -> None:  # [C3, F3]
    kept = LastValues(receiver(max_senders=1))
    kept.take("a@h", A, "light", 1, [b"light", b"a"], now=0)
    kept.take("b@h", A, "light", 1, [b"light", b"b"], now=1)  # past the bound: a@h is forgotten
    assert list(kept.matching("")) == [[b"light", b"b"]]
    assert kept.expire(now=1) == ["a@h"] and len(kept) == 1


def test_a_service_has_at_most_max_instances_alive_and_a_new_one_is_taken_once_one_is_forgotten() -> None:  # [A2]
    refused: list[str] = []
    r = receiver(max_instances=2, on_refused=refused.append)
    assert r.heartbeat("toaster@1", A, "light", 0, now=0) is Beat.TAKEN
    assert r.take("toaster@2", A, "light", 1, now=0.1)
    assert r.heartbeat("toaster@3", A, "light", 0, now=0.2) is Beat.DROPPED  # a third instance
    assert not r.take("toaster@3", A, "light", 1, now=0.3)
    assert r.take("switch@1", A, "light", 1, now=0.4)  # another service counts apart
    assert not r.take("toaster@1", B, "light", 1, now=0.5)  # [L4] before its heartbeat
    assert r.heartbeat("toaster@1", B, "light", 0, now=0.5) is Beat.TAKEN  # a new life of toaster@1: no new instance
    assert refused == ["toaster@3", "toaster@3"] and r.life_of("toaster@3") is None  # a new life is no new one
    assert r.expire(now=0.1 + GONE_AFTER + 0.01) == ["toaster@2"]
    assert r.take("toaster@3", A, "light", 1, now=2)  # room again: toaster@2 was forgotten [F1]
    assert r.instances == {"toaster": 2, "switch": 1}


def test_answers_come_at_once_up_to_a_burst_then_once_when_the_window_closes() -> None:  # [P5]
    answers = Answers(interval=INTERVAL, burst=3)
    assert [answers.now(b"light", now=10) for _ in range(5)] == [True, True, True, False, False]
    assert answers.now(b"", now=10.1)  # another prefix has its own window (the broker's answers differ by prefix)
    assert answers.next_due() == 10 + INTERVAL
    assert answers.due(now=10 + INTERVAL - 0.01) == []
    assert answers.due(now=10 + INTERVAL) == [b"light"]  # one answer for the two held
    assert answers.next_due() is None and answers.due(now=11) == []
    assert [answers.now(b"light", now=10 + INTERVAL + 0.1) for _ in range(3)] == [True, True, False]  # a window
    assert answers.now(b"light", now=10 + 2 * INTERVAL + 0.1)  # opened by the held answer, now closed
    single = Answers(interval=INTERVAL, burst=1)
    assert [single.now(b"", now=t) for t in (0, INTERVAL / 2, INTERVAL)] == [True, False, True]  # [opened, + interval)


def test_the_bounds_the_document_gives_are_the_codes() -> None:  # [B]
    table = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text().partition("## B.")[2]
    documented = dict(re.findall(r"^\| ([A-Z_]+) \| (\d+) \|", table, re.M))
    modules = (protocol, broker, forwarder, sockets)
    code = {name: next(getattr(m, name) for m in modules if hasattr(m, name)) for name in documented}
    assert documented == {name: str(value) for name, value in code.items()}
    assert len(documented) == 11


# --- the model: a reference written plainly, a world that knows the truth ---


class ReferenceStream:
    """G1-G4 with sets: `on_time` holds the seqs taken while they were the newest known; every other seq up to
    `top` and above `base` is missed. held: the newest taken."""

    def __init__(self, base: int) -> None:
        self.base = self.top = base
        self.held = 0
        self.on_time: set[int] = set()
        self.behind_since: float | None = None
        self.asks: list[float] = []  # times of the asks since it was last caught up

    @property
    def missed(self) -> int:
        return self.top - self.base - len(self.on_time)


class Reference:
    """The rules of docs/protocol.md as plainly as they can be written, with no shortcuts."""

    def __init__(self, max_senders: int, max_instances: int) -> None:
        self.max_senders, self.max_instances = max_senders, max_instances
        self.recency: list[str] = []  # alive, least recently heard first
        self.current: dict[str, int] = {}  # remembered senders (alive or forgotten): their current life
        self.heard: dict[str, float] = {}
        self.retired: dict[str, list[int]] = {}
        self.forgotten: list[str] = []  # least recently forgotten first
        self.streams: dict[str, dict[str, ReferenceStream]] = {}  # the current life's, by topic
        self.missed_before: dict[str, int] = {}  # what the streams of its earlier lives missed
        self.evicted: list[str] = []

    def _alive(self, name: str) -> bool:
        return name in self.recency

    def refuses(self, name: str) -> bool:
        """A2: one more instance of a service that has max_instances alive."""
        service = name.partition("@")[0]
        alive = [n for n in self.recency if n.partition("@")[0] == service]
        return not self._alive(name) and len(alive) >= self.max_instances

    def _hear(self, name: str, now: float) -> None:
        self.heard[name] = now
        self.recency.remove(name)
        self.recency.append(name)

    def _live(self, name: str, life: int) -> None:
        """`life` is current: a life that was not current until now starts its streams afresh [L3, F2, G3]."""
        if self.current.get(name) != life:
            self.missed_before[name] = self.missed_before.get(name, 0) + self._missed(name)
            self.current[name], self.streams[name] = life, {}

    def _arrive(self, name: str, life: int, now: float) -> None:
        if name in self.forgotten:
            self.forgotten.remove(name)
        self._live(name, life)
        self.retired[name], self.heard[name] = [], now
        self.recency.append(name)
        if len(self.recency) > self.max_senders:
            self.evicted.append(self.recency[0])
            self._forget(self.recency[0])

    def _forget(self, name: str) -> None:
        self.recency.remove(name)
        for topic, stream in self.streams[name].items():
            if KINDS[topic] is Kind.STATE:
                stream.held, stream.behind_since, stream.asks = 0, None, []
        self.forgotten.append(name)
        if len(self.forgotten) > self.max_senders:
            dropped = self.forgotten.pop(0)
            for table in (self.current, self.streams, self.missed_before):
                table.pop(dropped, None)

    def take(self, name: str, life: int, topic: str, seq: int, now: float) -> bool:
        if self.refuses(name):
            return False  # A2
        if not self._alive(name):
            self._arrive(name, life, now)
        elif self.current[name] != life:
            return False  # L4
        stream = self.streams[name].setdefault(topic, ReferenceStream(seq - 1))
        if seq <= stream.held:
            return False  # G2
        if seq > stream.top:
            stream.on_time.add(seq)
            stream.top = seq
        stream.held = seq
        if stream.held >= stream.top:
            stream.behind_since, stream.asks = None, []
        self._hear(name, now)
        return True

    def heartbeat(self, name: str, life: int, topic: str, seq: int, now: float) -> Beat:
        if self.refuses(name):
            return Beat.DROPPED  # A2
        if not self._alive(name):
            self._arrive(name, life, now)
        elif self.current[name] != life:
            if life in self.retired[name] and now - self.heard[name] <= 2 * INTERVAL:
                return Beat.DROPPED  # L5
            self.retired[name] = ([self.current[name]] + self.retired[name])[:RETIRED_MAX]
            self._live(name, life)  # L3
        stream = self.streams[name].setdefault(topic, ReferenceStream(seq))
        stream.top = max(stream.top, seq)
        self._hear(name, now)
        if KINDS[topic] is not Kind.STATE or stream.held >= stream.top:
            stream.behind_since, stream.asks = None, []
            return Beat.TAKEN
        if stream.behind_since is None:
            stream.behind_since = now
            return Beat.TAKEN
        waited = now - stream.behind_since >= INTERVAL / 2 and all(now - t >= INTERVAL / 2 for t in stream.asks)
        if waited and len(stream.asks) < RESYNC_MAX:
            stream.asks.append(now)
            return Beat.ASK
        return Beat.TAKEN

    def expire(self, now: float) -> list[str]:
        gone, self.evicted = self.evicted, []
        for name in [n for n in self.recency if self.heard[n] < now - GONE_AFTER]:
            self._forget(name)
            gone.append(name)
        return gone

    def _missed(self, name: str) -> int:
        return sum(stream.missed for stream in self.streams.get(name, {}).values())

    def missed(self) -> dict[str, int]:
        totals = {name: self.missed_before.get(name, 0) + self._missed(name) for name in self.current}
        return {name: total for name, total in totals.items() if total}

    def held(self, name: str, topic: str) -> int:
        stream = self.streams[name].get(topic)
        return stream.held if stream else 0


NAMES = ["switch@a", "switch@b", "web@b", "tool@c"]  # two instances of one service: A2
Sent = tuple[str, str, int, str, int, float]  # (kind 'msg' | 'beat', name, life, topic, seq, ts)


class Home(RuleBasedStateMachine):
    """The world: senders whose lives start and stop, a lossy FIFO to one receiver, and a broker that hears all."""

    @initialize(max_senders=st.sampled_from([2, 3, 10]), max_instances=st.sampled_from([1, 2, 16]))
    def start(self, max_senders: int, max_instances: int) -> None:
        self.now = 0.0
        self.receiver = Receiver(KINDS, GONE_AFTER, INTERVAL, max_senders=max_senders, max_instances=max_instances)
        self.reference = Reference(max_senders, max_instances)
        self.kept = LastValues(Receiver(KINDS, GONE_AFTER, INTERVAL))
        self.lives: dict[str, list[int]] = {name: [] for name in NAMES}  # in the order they started
        self.running: dict[str, list[int]] = {name: [] for name in NAMES}
        self.overlapped: set[str] = set()  # names that ever ran two lives at once
        self.seqs: dict[tuple[str, int, str], int] = {}
        self.clock: dict[int, float] = {}  # each life's wall clock offset: shown in `ts`, compared by nothing
        self.flight: list[Sent] = []
        self.proven: dict[str, int] = {}  # the newest life (by start) whose heartbeat the receiver took
        self.commands_taken: set[tuple[str, int, int]] = set()
        self.asks: dict[tuple[str, int, str], list[float]] = {}  # per stream: when the receiver asked again
        self.asks_behind: dict[tuple[str, int, str], int] = {}  # per stream: asks since it was last not behind

    # --- what the senders do ---

    @rule(name=st.sampled_from(NAMES), overlap=st.booleans(), clock=st.floats(-3600, 3600))
    def restart(self, name: str, overlap: bool, clock: float) -> None:
        life = len(self.clock) + 1  # distinct, like a random draw; the receiver sees no order in it
        life = life * 7919 % 100_003  # shuffled: never increasing with start order
        self.clock[life] = clock
        self.lives[name].append(life)
        if overlap and self.running[name]:  # a start-first update: the old life runs on for a while
            self.running[name] = [self.running[name][-1], life]
            self.overlapped.add(name)
        else:
            self.running[name] = [life]

    @rule(name=st.sampled_from(NAMES))
    def stop(self, name: str) -> None:
        self.running[name] = self.running[name][1:]  # the oldest running life stops (a crash, a scale-down)

    @rule(name=st.sampled_from(NAMES), topic=st.sampled_from(sorted(KINDS)))
    def publish(self, name: str, topic: str) -> None:
        if self.running[name]:
            life = self.running[name][-1]
            seq = self.seqs[name, life, topic] = self.seqs.get((name, life, topic), 0) + 1
            self.send(("msg", name, life, topic, seq, self.now + self.clock[life]))

    @rule(name=st.sampled_from(NAMES), topic=st.sampled_from(sorted(KINDS)), older=st.booleans())
    def heartbeat(self, name: str, topic: str, older: bool) -> None:
        if self.running[name]:
            life = self.running[name][0 if older else -1]
            self.send(("beat", name, life, topic, self.seqs.get((name, life, topic), 0), self.now + self.clock[life]))

    def answer(self, topic: str) -> None:
        """[P2] Every running life answers a subscription to `topic`: a heartbeat, then its state."""
        for name, lives in self.running.items():
            for life in lives:
                seq = self.seqs.get((name, life, topic), 0)
                self.send(("beat", name, life, topic, seq, self.now))
                if seq and KINDS[topic] is Kind.STATE:
                    self.send(("msg", name, life, topic, seq, self.now))

    def send(self, sent: Sent) -> None:
        self.flight.append(sent)
        kind, name, life, topic, seq, _ = sent
        if kind == "msg":
            self.kept.take(name, life, topic, seq, [topic.encode(), repr(sent).encode()], self.now)
        elif self.kept.receiver.heartbeat(name, life, topic, seq, self.now) is Beat.ASK:
            self.answer(topic)  # [C4]

    # --- what the network and time do ---

    @precondition(lambda self: self.flight)
    @rule()
    def lose(self) -> None:
        self.flight.pop(0)

    @precondition(lambda self: self.flight)
    @rule()
    def duplicate(self) -> None:
        self.flight.insert(0, self.flight[0])

    @rule(prefix=st.sampled_from(["", "light", "light-set"]))
    def resubscribe(self, prefix: str) -> None:
        """A reconnect: the broker hands over what it keeps [C2], the publishers answer too [P2]."""
        for frames in self.kept.matching(prefix):
            kind, name, life, topic, seq, ts = ast.literal_eval(frames[1].decode())
            assert KINDS[topic] is Kind.STATE and self.kept.receiver.life_of(name) == life  # [C1, C3]
            self.flight.append((kind, name, life, topic, seq, ts))
        for topic in KINDS:
            if topic.startswith(prefix):
                self.answer(topic)

    @rule(seconds=st.sampled_from([0, 0.1, INTERVAL / 2, INTERVAL, 2 * INTERVAL, GONE_AFTER]) | st.floats(0, 6))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def expire(self) -> None:
        gone = self.receiver.expire(self.now)
        assert gone == self.reference.expire(self.now)
        for name in gone:
            self.proven.pop(name, None)
        self.kept.expire(self.now)

    @precondition(lambda self: self.flight)
    @rule()
    def deliver(self) -> None:
        kind, name, life, topic, seq, _ = self.flight.pop(0)
        if kind == "msg":
            taken = self.receiver.take(name, life, topic, seq, self.now)
            assert taken == self.reference.take(name, life, topic, seq, self.now)
            if taken:
                self.check_fresh(name, life)
                if KINDS[topic] is Kind.COMMAND:
                    assert (name, life, seq) not in self.commands_taken, "a command acted on twice"
                    self.commands_taken.add((name, life, seq))
            return
        refused = self.reference.refuses(name)  # A2: one instance too many, whatever its life
        beat = self.receiver.heartbeat(name, life, topic, seq, self.now)
        assert beat == self.reference.heartbeat(name, life, topic, seq, self.now)
        if name not in self.overlapped and life == self.lives[name][-1] and not refused:  # the newest life
            assert beat is not Beat.DROPPED and self.receiver.life_of(name) == life, "a new life was refused"
        if beat is not Beat.DROPPED:
            start = self.lives[name].index(life)
            self.proven[name] = max(self.proven.get(name, start), start)
        if beat is Beat.ASK:
            self.asks.setdefault((name, life, topic), []).append(self.now)
            behind = self.asks_behind[name, life, topic] = self.asks_behind.get((name, life, topic), 0) + 1
            assert behind <= RESYNC_MAX, "asked again and again"  # [R3]
            self.answer(topic)

    def check_fresh(self, name: str, life: int) -> None:
        """No stale message: nothing of a life older than one whose heartbeat was taken (one life at a time)."""
        if name not in self.overlapped and name in self.proven:
            assert self.lives[name].index(life) >= self.proven[name], "an older life's message was taken"

    # --- after every step ---

    @invariant()
    def same_as_the_reference(self) -> None:
        if not hasattr(self, "receiver"):
            return
        assert self.receiver.missed() == self.reference.missed()  # every gap counted once [G4, G5]
        assert list(self.receiver.alive) == self.reference.recency
        assert list(self.receiver.forgotten) == self.reference.forgotten
        for name, sender in self.receiver.alive.items():
            assert sender.life == self.reference.current[name]
            for topic, stream in sender.streams.items():
                assert stream.held == self.reference.held(name, topic)  # the state held is the model's

    @invariant()
    def bounded(self) -> None:
        if not hasattr(self, "receiver"):
            return
        r = self.receiver
        assert len(r.alive) <= r.max_senders and len(r.forgotten) <= r.max_senders
        assert all(0 < count <= r.max_instances for count in r.instances.values())  # [A2]
        assert sum(r.instances.values()) == len(r.alive)
        for sender in [*r.alive.values(), *r.forgotten.values()]:
            assert len(sender.streams) <= len(KINDS) and len(sender.retired) <= RETIRED_MAX
        states = sum(kind is Kind.STATE for kind in KINDS.values())
        assert len(self.kept) <= len(self.kept.receiver.alive) * states  # the broker keeps only the alive [C6]
        for name in NAMES:  # a command is remembered as long as its sender is [G2]
            if name not in r.alive and name not in r.forgotten:
                self.commands_taken = {c for c in self.commands_taken if c[0] != name}
        for times in self.asks.values():  # asking is spaced [R2]
            assert all(b - a >= INTERVAL / 2 for a, b in itertools.pairwise(times))
        for name, life, topic in list(self.asks_behind):  # a time behind ends: caught up, replaced or forgotten
            sender = r.alive.get(name)
            stream = sender.streams.get(topic) if sender and sender.life == life else None
            if stream is None or stream.held >= stream.counted:
                del self.asks_behind[name, life, topic]


TestHome = Home.TestCase
TestHome.settings = settings(
    max_examples=600,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: a failure here is never a fluke of the draw
)
