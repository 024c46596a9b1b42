"""The receiving side of docs/protocol.md as plain objects, apart from any socket or loop.

Which life of a sender is current (rules L), what a stream holds and missed (G), when to ask again (R), who is
forgotten (F), and the broker's last values (C). Time is passed in, read from the receiver's own monotonic
clock: no rule compares two machines' clocks. tests/test_protocol.py checks these against a reference model.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping

MAX_SENDERS = 10_000  # [F2, F3] senders alive at one receiver, and forgotten senders remembered
MAX_INSTANCES = 16  # [A2] the config's default for `max_instances`: alive senders per service
RETIRED_MAX = 4  # [L5] retired lives remembered per sender
RESYNC_MAX = 3  # [R3] asks while one stream is behind
LAST_VALUES_MAX = 10_000  # [C6] messages the broker keeps
LAST_VALUES_MAX_BYTES = 16 << 20  # [C6] and bytes
ANSWER_BURST = 8  # [P5] answers to one prefix per heartbeat_interval; more subscriptions share one answer


class Kind(enum.StrEnum):
    """[K2-K4] What a topic's messages are, declared in the config."""

    STATE = "state"
    COMMAND = "command"
    EVENT = "event"


class Beat(enum.Enum):
    """What a receiver made of a heartbeat."""

    DROPPED = 0  # a retired life's [L5]
    TAKEN = 1
    ASK = 2  # taken, and the stream is behind: ask again [R2]


class Stream:
    """[G1] One life of one sender on one topic: the seq of the newest message taken (`held`, 0: none), the seq up
    to which every message is accounted for (`counted`), and how long it has been behind [R1]."""

    __slots__ = ("asked_at", "asks", "behind_since", "counted", "held")

    def __init__(self, counted: int) -> None:
        self.held = 0
        self.counted = counted  # [G3] what came before the first contact is not counted
        self.behind_since: float | None = None
        self.asked_at = -math.inf
        self.asks = 0

    def take(self, seq: int) -> int:
        """[G2, G4] Take the message `seq` (> held, checked by the caller); how many were missed before it."""
        missed = max(seq - self.counted - 1, 0)
        self.held = seq
        self.counted = max(self.counted, seq)
        if self.behind_since is not None and seq >= self.counted:  # [R3] caught up: asking starts afresh
            self.behind_since, self.asks = None, 0
        return missed

    def announce(self, seq: int) -> int:
        """[G4] A heartbeat says `seq` is the newest: how many more that makes missed."""
        missed = max(seq - self.counted, 0)
        self.counted = max(self.counted, seq)
        return missed

    def forget(self) -> None:
        """[F1, F2] The sender went: the state it held is dropped, `counted` stays, should this life come back."""
        self.held = 0
        self.behind_since, self.asks = None, 0


class Resync:
    """[R1-R3] When a receiver that holds less than a heartbeat announced asks again, and that it stops asking."""

    def __init__(self, heartbeat_interval: float) -> None:
        self.wait = heartbeat_interval / 2  # [R2] the state sent with a heartbeat [P2] may be on its way

    def due(self, stream: Stream, now: float) -> bool:
        """At a heartbeat of `stream`'s life, after its seq was announced: whether to ask now."""
        if stream.held >= stream.counted:  # [R1] not behind
            stream.behind_since, stream.asks = None, 0
            return False
        if stream.behind_since is None:
            stream.behind_since = now
            return False
        if stream.asks >= RESYNC_MAX or now - stream.behind_since < self.wait or now - stream.asked_at < self.wait:
            return False
        stream.asks += 1
        stream.asked_at = now
        return True


class Sender:
    """[L1] What a receiver knows of one sender: its current life and that life's streams by topic, the lives it
    retired [L5], when it was last heard [L2], and how many of its messages it missed [G5]."""

    __slots__ = ("heard", "life", "missed", "retired", "streams")

    def __init__(self, life: int) -> None:
        self.life = life
        self.streams: dict[str, Stream] = {}
        self.retired: tuple[int, ...] = ()
        self.heard = -math.inf
        self.missed = 0

    def live(self, life: int) -> None:
        """[L3, F2, G3] `life` is current from now on; the streams of the one before go with it."""
        self.life = life
        self.streams = {}


class Receiver:
    """The rules every receiver follows [L, G, R, F], for the topics of `kinds` (their declared kinds [K1]).

    `take` and `heartbeat` judge one message each; `expire` forgets who went quiet. `on_gap(sender, missed)` is
    called for each gap [G5]. `now` is always the receiver's own monotonic clock.
    """

    def __init__(
        self,
        kinds: Mapping[str, Kind],
        gone_after: float,
        heartbeat_interval: float,
        on_gap: Callable[[str, int], None] | None = None,
        max_senders: int = MAX_SENDERS,
        max_instances: int = MAX_INSTANCES,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.kinds = kinds
        self.gone_after = gone_after
        self.quiet_after = 2 * heartbeat_interval  # [L5] a current life not heard for this long may have stopped
        self.resync = Resync(heartbeat_interval)
        self.on_gap = on_gap
        self.max_senders = max_senders
        self.max_instances, self.on_refused = max_instances, on_refused
        self.instances: Counter[str] = Counter()  # [A2] senders alive per service
        self.alive: OrderedDict[str, Sender] = OrderedDict()  # least recently heard first [L2]
        self.forgotten: OrderedDict[str, Sender] = OrderedDict()  # [F2] least recently forgotten first
        self._evicted: list[str] = []  # [F3] forgotten to keep the bound; reported by the next expire()

    def take(self, name: str, life: int, topic: str, seq: int, now: float) -> bool:
        """Whether the message `seq` of `name`'s `life` on `topic` (a declared one) is taken."""
        sender = self.alive.get(name)
        if sender is None:
            if (sender := self._arrive(name, life, now)) is None:
                return False  # [A2]
        elif sender.life != life:
            return False  # [L4] not proven to run: an older life's re-sent state, or a new one before its heartbeat
        stream = sender.streams.get(topic)
        if stream is None:
            stream = sender.streams[topic] = Stream(seq - 1)  # [G3]
        elif seq <= stream.held:
            return False  # [G2] a copy, or a re-send of what we hold
        if missed := stream.take(seq):
            self._missed(name, sender, missed)
        sender.heard = now  # [L2]
        self.alive.move_to_end(name)
        return True

    def heartbeat(self, name: str, life: int, topic: str, seq: int, now: float) -> Beat:
        """A heartbeat of `name`'s `life` for `topic` with its newest `seq` [P1]."""
        kind = self.kinds.get(topic)
        if kind is None:
            return Beat.DROPPED  # [K1]
        sender = self.alive.get(name)
        if sender is None:
            if (sender := self._arrive(name, life, now)) is None:
                return Beat.DROPPED  # [A2]
        elif sender.life != life:
            if life in sender.retired and now - sender.heard <= self.quiet_after:
                return Beat.DROPPED  # [L5]
            sender.retired = (sender.life, *sender.retired)[:RETIRED_MAX]
            sender.live(life)  # [L3] a heartbeat is never re-sent: its life runs now
        stream = sender.streams.get(topic)
        if stream is None:
            stream = sender.streams[topic] = Stream(seq)  # [G3]
        elif missed := stream.announce(seq):
            self._missed(name, sender, missed)
        sender.heard = now  # [L2]
        self.alive.move_to_end(name)
        if kind is Kind.STATE and self.resync.due(stream, now):  # [R1, R5]
            return Beat.ASK
        return Beat.TAKEN

    def _arrive(self, name: str, life: int, now: float) -> Sender | None:
        """[L3, F2] `name`, not alive, is from now on, with `life` current: as it was if that life comes back,
        afresh otherwise. (A copy of a command already taken revives it too, though it is dropped [G2].)
        None if its service has `max_instances` alive already [A2]."""
        service = name.partition("@")[0]
        if self.instances[service] >= self.max_instances:
            if self.on_refused:
                self.on_refused(name)
            return None
        self.instances[service] += 1
        sender = self.forgotten.pop(name, None) or Sender(life)
        if sender.life != life:
            sender.live(life)
        sender.heard = now
        self.alive[name] = sender
        if len(self.alive) > self.max_senders:  # [F3]
            evicted = next(iter(self.alive))
            self._forget(evicted)
            self._evicted.append(evicted)
        return sender

    def _missed(self, name: str, sender: Sender, missed: int) -> None:
        sender.missed += missed  # [G5]
        if self.on_gap:
            self.on_gap(name, missed)

    def _forget(self, name: str) -> None:
        """[F1, F2] `name` is no longer alive: nothing held, no retired life, but remembered as it was."""
        sender = self.alive.pop(name)
        service = name.partition("@")[0]
        self.instances[service] -= 1
        if not self.instances[service]:
            del self.instances[service]
        sender.retired = ()
        for topic, stream in sender.streams.items():
            if self.kinds.get(topic) is Kind.STATE:  # a command's seq stays: it is never acted on twice [G2]
                stream.forget()
        self.forgotten[name] = sender
        if len(self.forgotten) > self.max_senders:
            del self.forgotten[next(iter(self.forgotten))]  # the least recently forgotten

    def expire(self, now: float) -> list[str]:
        """[F1, F3] The senders not heard for `gone_after` (and those forgotten to keep the bound), now forgotten."""
        gone, self._evicted = self._evicted, []
        deadline = now - self.gone_after
        while self.alive:
            name, sender = next(iter(self.alive.items()))
            if sender.heard >= deadline:
                break
            self._forget(name)
            gone.append(name)
        return gone

    def life_of(self, name: str) -> int | None:
        """The current life of `name`, None if it is not alive."""
        sender = self.alive.get(name)
        return sender.life if sender else None

    def missed(self) -> dict[str, int]:
        """Per sender remembered, alive or forgotten: the messages of it this receiver missed [G5]."""
        return {name: s.missed for table in (self.forgotten, self.alive) for name, s in table.items() if s.missed}

    def missed_of(self, name: str) -> int:
        sender = self.alive.get(name) or self.forgotten.get(name)
        return sender.missed if sender else 0


class LastValues:
    """[C1-C6] The broker's kept state: it receives every declared topic by the rules above and keeps, of each
    state stream, the message it last took, as the frames it came in."""

    def __init__(
        self, receiver: Receiver, max_messages: int = LAST_VALUES_MAX, max_bytes: int = LAST_VALUES_MAX_BYTES
    ) -> None:
        self.receiver = receiver
        self.max_messages, self.max_bytes = max_messages, max_bytes
        # (topic, sender) -> (life, frames) of the last message taken; least recently updated first
        self._kept: OrderedDict[tuple[str, str], tuple[int, list[bytes]]] = OrderedDict()
        self._bytes = 0  # the frames' sizes, all kept messages

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, name: str, life: int, topic: str, seq: int, frames: list[bytes], now: float) -> None:
        receiver = self.receiver
        if not receiver.take(name, life, topic, seq, now) or receiver.kinds.get(topic) is not Kind.STATE:
            return  # [C1] only what is taken, and only state
        key = (topic, name)
        self._drop(key)
        self._kept[key] = (life, frames)
        self._bytes += len(frames[0]) + len(frames[1])
        while len(self._kept) > self.max_messages or self._bytes > self.max_bytes:  # [C6]
            self._drop(next(iter(self._kept)))

    def _drop(self, key: tuple[str, str]) -> None:
        if kept := self._kept.pop(key, None):
            self._bytes -= len(kept[1][0]) + len(kept[1][1])

    def expire(self, now: float) -> list[str]:
        """[C3, F1] The senders forgotten now, their kept messages dropped."""
        gone = self.receiver.expire(now)
        for name in gone:
            for topic in self.receiver.kinds:
                self._drop((topic, name))
        return gone

    def matching(self, prefix: str) -> Iterator[list[bytes]]:
        """[C2, C3] The kept messages of every topic starting with `prefix`, of each sender's current life."""
        life_of = self.receiver.life_of
        for (topic, name), (life, frames) in list(self._kept.items()):
            if topic.startswith(prefix) and life_of(name) == life:
                yield frames


class Answers:
    """[P5, C2] When a subscription is answered: at once, up to ANSWER_BURST times per prefix in a window of one
    heartbeat_interval (the window opens with its first answer); past that, once when the window closes, for
    every subscription that came meanwhile. Each answer goes to every subscriber of the prefix, so the later ones
    lose nothing, and a flood of one subscription costs at most ANSWER_BURST + 1 answers a window.
    The prefixes are the caller's to bound (to those of its topics)."""

    def __init__(self, interval: float, burst: int = ANSWER_BURST) -> None:
        self.interval, self.burst = interval, burst
        self._windows: dict[bytes, list[float]] = {}  # prefix -> [opened at, answers in it]
        self._pending: dict[bytes, float] = {}  # prefix -> when its window closes: one answer due then

    def now(self, prefix: bytes, now: float) -> bool:
        """A subscription to `prefix` came: whether to answer it now (else it is due when `due` says)."""
        window = self._windows.get(prefix)
        if window is None or now >= window[0] + self.interval:
            self._windows[prefix] = [now, 1]
            return True
        if window[1] < self.burst:
            window[1] += 1
            return True
        self._pending[prefix] = window[0] + self.interval
        return False

    def next_due(self) -> float | None:
        """When the earliest held answer is due, None if none is held."""
        return min(self._pending.values(), default=None)

    def due(self, now: float) -> list[bytes]:
        """The prefixes whose held answer is due now, each answered in a window of its own from now."""
        due = [prefix for prefix, at in self._pending.items() if at <= now]
        for prefix in due:
            del self._pending[prefix]
            self._windows[prefix] = [now, 1]
        return due
