"""Each service's behaviour over real ZeroMQ sockets on loopback, run as real processes (no Docker)."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
import zmq
from smarthome.core import logs
from smarthome.core.config import load_config
from smarthome.core.envelope import Message, encode
from smarthome.core.identity import Identity
from smarthome.core.keys import ZAP_DOMAIN
from smarthome.core.protocol import ANSWER_BURST
from smarthome.core.runtime import Loop
from smarthome.core.sockets import (
    CONNECT_TIMEOUT,
    SUBSCRIPTION_MAX_BYTES,
    SUBSCRIPTIONS_PER_PEER,
    TCP_KEEPALIVE_IDLE,
    TCP_KEEPALIVE_INTVL,
)

from tests.support.base import ALL_READY, BROKER_CONFIG, DEADLINE, LABELS, SHIPPED_CONFIG, wait_until
from tests.support.peers import listener, with_key
from tests.support.processes import ServiceProcess, endpoint, loopback_config

Start = Callable[[str, Path], ServiceProcess]
ORDERS = {
    "publishers first": ["light-switch", "coffee-maker", "toaster", "smart-mirror"],
    "subscribers first": ["smart-mirror", "toaster", "coffee-maker", "light-switch"],
    "mixed": ["coffee-maker", "smart-mirror", "light-switch", "toaster"],
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return loopback_config(tmp_path, **{"services.coffee-maker.prep_time": 0.2, "services.toaster.prep_time": 0.1})


@pytest.mark.parametrize("order", ORDERS, ids=list(ORDERS))
def test_any_start_order_reaches_the_whole_routine(config: Path, run_service: Start, order: str) -> None:
    services = {}
    for name in ORDERS[order]:
        services[name] = run_service(name, config)
        services[name].says(f"{LABELS[name]} started")  # really started in this order
    services["light-switch"].says("LIGHT SWITCH published 'light is ON' (seq 1)")
    for appliance, name in (("coffee-maker", "COFFEE MAKER"), ("toaster", "TOASTER")):  # the tutorial's lines
        services[appliance].says(f"{name} received 'light is ON' from light.")
        services[appliance].says(f"{name} preparing for 0.{1 if name == 'TOASTER' else 2}s")
        services[appliance].says(f"{name} ready (seq 2)")
    mirror = services["smart-mirror"]
    mirror.says('Topic: COFFEE MAKER => {"status": true}')
    mirror.says('Topic: TOASTER => {"status": true}')
    mirror.says(ALL_READY)


def test_restarted_services_are_found_again_and_the_mirror_converges(config: Path, run_service: Start) -> None:
    services = {name: run_service(name, config) for name in ORDERS["publishers first"]}
    mirror = services["smart-mirror"]
    mirror.wait_for(ALL_READY)

    toast_ready = 'Topic: TOASTER => {"status": true}'
    assert services["toaster"].stop() == 0
    toaster = run_service("toaster", config)
    toaster.says("TOASTER received 'light is ON' from light.")  # the switch re-sent its state to the newcomer
    mirror.wait_for(toast_ready, times=2)  # the new toaster's own 'ready' reached the mirror
    wait_until(
        lambda: mirror.last("MIRROR coffee=") == ALL_READY, "the mirror to show all ready", describe=mirror.output
    )

    coffee_maker = services["coffee-maker"]
    received = coffee_maker.count("received 'light is ON'")
    assert services["light-switch"].stop() == 0
    run_service("light-switch", config).says("LIGHT SWITCH published 'light is ON' (seq 1)")
    coffee_maker.wait_for("received 'light is ON' from light.", times=received + 1)  # the new switch's state
    assert mirror.count(toast_ready) == 2  # light was already on: nothing to redo


def test_light_off_makes_appliances_idle_and_on_makes_them_ready_again(tmp_path: Path, run_service: Start) -> None:
    config = loopback_config(
        tmp_path,
        **{
            "services.light-switch.toggle_period": 0.5,
            "services.coffee-maker.prep_time": 0,
            "services.toaster.prep_time": 0,
        },
    )
    services = {name: run_service(name, config) for name in ORDERS["publishers first"]}
    services["light-switch"].says("LIGHT SWITCH published 'light is OFF' (seq 2)")
    services["toaster"].says("TOASTER received 'light is OFF' from light.")
    services["toaster"].says("TOASTER idle (seq 1)")  # at start
    services["toaster"].says("TOASTER idle (seq 3)")  # after ready (2), for OFF
    services["smart-mirror"].wait_for(ALL_READY, times=2)  # ON -> OFF -> ON again


def test_the_mirror_publishes_what_it_shows_and_shows_it_with_no_publisher_too(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    ready = {"services.coffee-maker.prep_time": 0, "services.toaster.prep_time": 0}
    config = loopback_config(tmp_path, **ready)
    view = listener(context, config, "smart-mirror", b"mirror")
    services = {name: run_service(name, config) for name in ORDERS["publishers first"]}

    def shown() -> dict[str, str] | None:
        while view.poll(100):
            last = json.loads(view.recv_multipart()[1])["body"]["view"]
            if last == {"coffee": "ready", "toast": "ready"}:
                return last
        return None

    wait_until(shown, "the mirror's view published", describe=services["smart-mirror"].output)
    for service in services.values():
        service.stop()

    quiet = tmp_path / "quiet"  # the shipped config with no publisher for the mirror, and nobody reading it
    quiet.mkdir()
    text = SHIPPED_CONFIG.read_text().replace('    publish: { topic: mirror, bind: "tcp://*:5561" }\n', "")
    text = text.replace(', "tcp://smart-mirror:5561"]', "]")
    assert ":5561" not in text, "test setup: the shipped config's mirror publisher moved"
    (quiet / SHIPPED_CONFIG.name).write_text(text)
    config = loopback_config(quiet, quiet / SHIPPED_CONFIG.name, **ready)
    mirror = {name: run_service(name, config) for name in ORDERS["publishers first"]}["smart-mirror"]
    mirror.says(ALL_READY)


def test_every_service_exits_0_on_sigterm_with_a_stopped_line(config: Path, run_service: Start) -> None:
    services = [run_service(name, config) for name in ORDERS["publishers first"]]
    services[-1].wait_for(ALL_READY)
    for service in services:
        started = time.monotonic()
        assert service.stop() == 0
        assert time.monotonic() - started < 5, f"{service.name} took too long to stop"
        assert service.messages()[-1] == f"{LABELS[service.name]} stopped"


def test_sigterm_while_the_peer_is_unreachable_still_exits_0(config: Path, run_service: Start) -> None:
    mirror = run_service("smart-mirror", config)
    mirror.says(f"MIRROR cannot reach {endpoint(config, 'coffee-maker')} yet, retrying")
    assert mirror.stop() == 0


class FakeAppliance:
    """A test-owned publisher on the coffee maker's endpoint, to send the mirror whatever we like."""

    def __init__(self, context: zmq.Context, address: str, config: Path) -> None:
        self.sock = with_key(context.socket(zmq.XPUB), config, "coffee-maker")  # the mirror pins its key
        self.sock.linger = 0
        self.sock.bind(address)
        self.seq = 0

    def wait_for_subscriber(self) -> None:
        assert self.sock.poll(15_000), "the mirror never subscribed"
        assert self.sock.recv()[:1] == b"\x01"

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def status(self, ready: bool, topic: str = "coffee", seq: int | None = None) -> list[bytes]:
        self.seq = seq if seq is not None else self.seq + 1
        return encode(Message(topic, "coffee-maker@test", 1, self.seq, time.time(), {"status": ready}))


@pytest.fixture
def fake_coffee_maker(config: Path, context: zmq.Context) -> FakeAppliance:
    return FakeAppliance(context, endpoint(config, "coffee-maker"), config)


def test_malformed_messages_are_logged_and_dropped_and_the_mirror_keeps_going(
    config: Path, run_service: Start, fake_coffee_maker: FakeAppliance
) -> None:
    mirror = run_service("smart-mirror", config)
    fake_coffee_maker.wait_for_subscriber()
    good = fake_coffee_maker.status(True)
    for frames in (
        [b"coffee"],
        [b"coffee", b"not json"],
        [b"coffee", json.dumps({"sender": "x", "life": 1, "ts": 0, "body": {"status": True}}).encode()],
        [good[0], good[1].replace(b"true", b'"yes"')],
    ):
        fake_coffee_maker.send(frames)
    fake_coffee_maker.send(good)
    mirror.wait_for('Topic: COFFEE MAKER => {"status": true}')  # sent last, so every bad one was handled by now
    warnings = [message for line, message in zip(mirror.lines, mirror.messages(), strict=True) if "WARNING" in line]
    assert warnings == [
        f"MIRROR dropped a malformed message: {reason}"
        for reason in (
            "expected 2 frames [topic, json], got 1",
            "topic 'coffee': not valid JSON (JSON is malformed: invalid character (byte 4))",
            "topic 'coffee': missing key 'seq'",
            "topic 'coffee': expected 'bool', got 'str' at 'body.status'",
        )
    ]
    assert mirror.proc.poll() is None


def test_duplicates_stale_messages_and_prefix_matches_are_ignored(
    config: Path, run_service: Start, fake_coffee_maker: FakeAppliance
) -> None:
    mirror = run_service("smart-mirror", config)
    fake_coffee_maker.wait_for_subscriber()
    first = fake_coffee_maker.status(False, seq=5)
    fake_coffee_maker.send(first)
    fake_coffee_maker.send(first)  # a re-sent last value
    fake_coffee_maker.send(fake_coffee_maker.status(True, seq=4))  # older than what the mirror has
    fake_coffee_maker.send(fake_coffee_maker.status(True, topic="coffeecup", seq=6))  # matches the prefix 'coffee'
    # Another topic's body need not fit ours: not ours, so not malformed either.
    fake_coffee_maker.send(encode(Message("coffeecup", "cup@test", 1, 1, time.time(), {"cups": 2})))
    fake_coffee_maker.send(fake_coffee_maker.status(True, seq=7))
    fake_coffee_maker.send(fake_coffee_maker.status(True, seq=8))  # new, but the mirror's view stays the same
    fake_coffee_maker.send(fake_coffee_maker.status(False, seq=9))
    mirror.wait_for('Topic: COFFEE MAKER => {"status": false}', times=2)
    topic_lines = [line.split("INFO    ")[1] for line in mirror.lines if "Topic:" in line]
    assert topic_lines == [f'Topic: COFFEE MAKER => {{"status": {s}}}' for s in ("false", "true", "true", "false")]
    assert [m for m in mirror.messages() if m.startswith("MIRROR coffee=")] == [  # one line per change of view
        f"MIRROR coffee={state} toast=unknown" for state in ("idle", "ready", "idle")
    ]
    assert not [line for line in mirror.lines if "malformed" in line]


def test_a_subscriber_joining_late_gets_the_current_state_without_any_new_publish(
    config: Path, run_service: Start, context: zmq.Context
) -> None:
    switch = run_service("light-switch", config)
    switch.says(f"LIGHT SWITCH listening on {endpoint(config, 'light-switch')}")
    switch.says("LIGHT SWITCH started")
    sub = listener(context, config, "light-switch", b"light")
    wait_until(lambda: sub.poll(100), "the current light state")
    topic, body = sub.recv_multipart()
    assert topic == b"light"
    assert json.loads(body)["body"] == {"state": "ON"}
    assert switch.count("published") == 1  # a re-send of the state, not a new publish
    switch.says("LIGHT SWITCH has a new subscriber at 127.0.0.1; answering with a heartbeat and the current state")


def test_every_subscriber_of_a_flood_is_answered_at_once_or_when_the_window_closes(
    config: Path, run_service: Start, context: zmq.Context
) -> None:  # [P5]
    switch = run_service("light-switch", config)
    switch.says("LIGHT SWITCH started")
    subscribers = [listener(context, config, "light-switch", b"light") for _ in range(ANSWER_BURST + 2)]
    for sub in subscribers:
        assert sub.poll(DEADLINE * 1000), switch.output()
        assert json.loads(sub.recv_multipart()[1])["body"] == {"state": "ON"}


def test_a_subscription_taken_back_is_not_answered_as_a_new_one(
    config: Path, run_service: Start, context: zmq.Context
) -> None:
    switch = run_service("light-switch", config)
    said = "LIGHT SWITCH has a new subscriber at 127.0.0.1; answering with a heartbeat and the current state"
    leaving = listener(context, config, "light-switch", b"lig")  # a prefix of our topic: answered as well
    switch.wait_for(said)
    leaving.unsubscribe(b"lig")  # nobody else holds it: the switch hears it go
    leaving.subscribe(b"li")  # after it, on the same connection: when this is answered, that was heard
    switch.wait_for(said, times=2)
    assert switch.count(said) == 2, switch.output()


@pytest.mark.parametrize("source", [SHIPPED_CONFIG, BROKER_CONFIG], ids=["direct", "broker"])
def test_every_loop_touches_its_health_file_whatever_the_heartbeat_interval(
    tmp_path: Path, run_service: Start, source: Path
) -> None:
    # Heartbeats far apart: health must not hang on them (the compose healthcheck allows 2 s).
    config = loopback_config(tmp_path, source, heartbeat_interval=30)
    for name in yaml.safe_load(config.read_text())["services"]:
        health = tmp_path / f"{name}.healthy"
        service = run_service(name, config, env={"SMARTHOME_HEALTH_FILE": str(health)})
        first = wait_until(lambda h=health: h.exists() and h.stat().st_mtime_ns, f"{name} to touch its health file")
        wait_until(lambda h=health, f=first: h.stat().st_mtime_ns > f, f"{name} to touch it again", 5, service.output)
        assert service.stop() == 0
        assert not health.exists()  # a stopped service is not healthy


@pytest.fixture
def loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Loop:
    """A light switch's poller loop on 127.0.0.1 without CurveZMQ, with nothing of its own to do yet."""
    monkeypatch.setenv("SMARTHOME_LOOPBACK", "1")
    return Loop(Identity("light-switch", load_config(loopback_config(tmp_path, curve=False))))


def test_a_cancelled_timer_never_runs_and_the_others_run_in_order(loop: Loop) -> None:
    ran: list[str] = []
    loop.call_later(0.02, lambda: ran.append("second"))
    loop.call_later(0, lambda: ran.append("first"))
    loop.call_later(0.01, lambda: ran.append("cancelled")).cancel()
    loop.call_later(0.05, loop.stop)
    assert loop.run() == 0
    assert ran == ["first", "second"]


def test_every_socket_has_the_configs_heartbeats_the_runtimes_limits_and_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Sockets.make, read back from the sockets: linger 0 (a stop never waits on a peer), the config's ZMTP
    heartbeats, the kernel's TCP keepalive, the largest message a peer may send (into an XPUB, a subscription;
    and what waits there unread is bounded [P6]), a connect timeout on a connecting socket, CurveZMQ on each (a
    bound one is a server, for ZAP)."""
    monkeypatch.setenv("SMARTHOME_LOOPBACK", "1")
    monkeypatch.setenv("SMARTHOME_KEYS", str(tmp_path / "keys"))
    caplog.set_level(logging.INFO)
    zmtp = {"zmtp.heartbeat_ivl": 0.25, "zmtp.heartbeat_timeout": 0.75, "zmtp.heartbeat_ttl": 1.25}
    config = loopback_config(tmp_path, max_message_bytes=4096, **zmtp)
    loop = Loop(Identity("light-switch", load_config(config)))
    bind = endpoint(config, "light-switch")
    xpub = loop.sockets.make(zmq.XPUB, bind=bind)
    sub = loop.sockets.make(zmq.SUB, connect=bind, topics=["light"])
    pub = loop.sockets.make(zmq.PUB, bind="tcp://127.0.0.1:0")
    for sock in (xpub, sub, pub):
        assert (sock.linger, sock.heartbeat_ivl, sock.heartbeat_timeout, sock.heartbeat_ttl) == (0, 250, 750, 1200)
        assert (sock.tcp_keepalive, sock.tcp_keepalive_idle, sock.tcp_keepalive_intvl) == (
            1,
            TCP_KEEPALIVE_IDLE,
            TCP_KEEPALIVE_INTVL,
        )
        assert sock.mechanism == zmq.CURVE
    assert (xpub.maxmsgsize, sub.maxmsgsize, pub.maxmsgsize) == (SUBSCRIPTION_MAX_BYTES, 4096, 4096)
    assert xpub.rcvhwm == SUBSCRIPTIONS_PER_PEER != sub.rcvhwm
    assert (xpub.curve_server, sub.curve_server, pub.curve_server) == (True, False, True)
    assert xpub.zap_domain == pub.zap_domain == ZAP_DOMAIN.encode()
    assert sub.connect_timeout == int(CONNECT_TIMEOUT * 1000)
    assert f"LIGHT SWITCH listening on {bind}" in [r.getMessage() for r in caplog.records]
    loop.context.destroy(linger=0)


def test_a_handler_that_raises_costs_its_message_only_and_a_burst_read_to_its_end_leaves_the_loop_free(
    loop: Loop, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Loop.watch: a message whose handler raises is dropped with one line naming the service, and the loop goes
    on with the next. A burst is read to its end without waiting for more: the loop stops when asked."""
    monkeypatch.setattr(logs.peer_warnings, "peers", OrderedDict())  # a whole allowance of lines
    inbox, sender = loop.context.socket(zmq.PULL), loop.context.socket(zmq.PUSH)
    inbox.bind("inproc://burst")
    sender.connect("inproc://burst")
    handled: list[list[bytes]] = []

    def handle(frames: list[bytes]) -> None:
        if frames == [b"bad"]:
            raise ValueError("cannot read b'bad'")
        handled.append(frames)

    loop.watch(inbox, handle)
    for frames in ([b"one"], [b"bad"], [b"two", b"parts"]):
        sender.send_multipart(frames)
    loop.call_later(0.1, loop.stop)  # a loop stuck in a read would never run it: pytest's timeout ends it
    assert loop.run() == 0
    assert handled == [[b"one"], [b"two", b"parts"]]
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert said == ["LIGHT SWITCH dropped a message it could not handle: ValueError: cannot read b'bad'"]


def test_an_idle_loop_wakes_for_its_timers_only_and_writes_its_lines_in_between(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """A timer that ran is an event, as a message is: what it sent is on its way, and the lines it logged wait
    while the loop has more to do (here a timer due at once). They are written when a poll finds nothing to do,
    before the next timer. Idle, the loop sleeps until its next timer is due (LINES_AFTER_IDLE at most while it
    holds lines): a few polls a timer, never a spin."""
    caplog.set_level(logging.INFO)
    log = logging.getLogger("smarthome.test")
    polls, poll = 0, loop.poller.poll

    def counted(timeout: int) -> list[tuple[zmq.Socket, int]]:
        nonlocal polls
        polls += 1
        return poll(timeout)

    loop.poller.poll = counted  # type: ignore[method-assign]  # the real poll, counted
    ticks: list[int] = []
    checks: list[tuple[int, list[str]]] = []  # each tick, the lines written when a timer due at once ran

    def tick() -> None:
        ticks.append(len(ticks))
        log.info("tick %d", ticks[-1])
        loop.call_later(0, lambda n=ticks[-1]: checks.append((n, [r.getMessage() for r in caplog.records])))

    loop.every(0.1, tick)
    loop.call_later(0.55, loop.stop)
    assert loop.run() == 0
    assert [n for n, lines in checks] == [0, 1, 2, 3, 4]
    for n, lines in checks:
        assert f"tick {n}" not in lines  # held while the loop had more to do
        assert n == 0 or f"tick {n - 1}" in lines  # written before the next tick
    assert polls <= 5 * len(ticks) + 5, f"{polls} polls for {len(ticks)} timers: the loop spins"
