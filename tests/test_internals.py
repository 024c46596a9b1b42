"""The private parts of pyzmq and of logging that the runtime leans on, checked against what is installed.

Each is used for speed or to run on the poller loop (the module named says why); none is promised by its
library. An upgrade of pyzmq or Python that changes one fails here, naming it, instead of a service going
wrong quietly.
"""

from __future__ import annotations

import inspect
import logging
import os
import resource
import socket
from collections import OrderedDict
from pathlib import Path

import pytest
import zmq
from smarthome.core import logs
from smarthome.core.messaging import Subscription, send_frames
from smarthome.core.sockets import (
    MEMORY_BACK_AFTER,
    SUBSCRIPTIONS_PER_PEER,
    SubscriptionCap,
    connection_of,
    connection_on,
    give_back_memory,
    shut_down,
)
from zmq.auth.base import Authenticator


def test_send_frames_sends_what_send_multipart_sends(context: zmq.Context) -> None:
    """messaging.send_frames calls zmq.backend.Socket.send, under Socket.send's checks."""
    assert issubclass(zmq.Socket, zmq.backend.Socket)
    receiver, sender = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    receiver.bind("inproc://frames")
    sender.connect("inproc://frames")
    frames = [b"toast", b'{"status": true}', b"", b"\x00" * 3]
    send_frames(sender, frames)
    sender.send_multipart(frames)
    assert receiver.poll(5000) and receiver.recv_multipart() == frames
    assert receiver.poll(5000) and receiver.recv_multipart() == frames
    receiver.close()
    sender.close()


def test_the_zap_handler_is_a_coroutine_that_answer_zap_can_drive() -> None:
    """keys.answer_zap steps pyzmq's ZAP handler coroutine by hand, on the poller loop."""
    assert inspect.iscoroutinefunction(Authenticator.handle_zap_message)
    assert list(inspect.signature(Authenticator.handle_zap_message).parameters) == ["self", "msg"]


def test_logging_has_what_held_lines_replace() -> None:
    """logs.setup_logging turns off logging._srcfile; HoldingLogger._log overrides Logger._log, signature and all."""
    assert hasattr(logging, "_srcfile")
    assert inspect.signature(logs.HoldingLogger._log).parameters.keys() == (
        inspect.signature(logging.Logger._log).parameters.keys()
    )
    assert isinstance(logging.Logger.manager.loggerDict, dict)


def verbose_xpub(context: zmq.Context) -> tuple[zmq.Socket, int]:
    """A bound XPUB that hands up every subscription, as every bound publisher of ours does, and its port."""
    publisher = context.socket(zmq.XPUB)
    publisher.xpub_verbose = True
    return publisher, publisher.bind_to_random_port("tcp://127.0.0.1")


def test_a_subscription_tells_the_connection_it_came_on(context: zmq.Context) -> None:
    """sockets.SubscriptionCap reads ZMQ_SRCFD (deprecated in libzmq, kept in 4.3) on an XPUB's subscriptions,
    and libzmq's own unsubscribe for a peer that left has none."""
    publisher, port = verbose_xpub(context)
    subscriber = context.socket(zmq.SUB)
    subscriber.connect(f"tcp://127.0.0.1:{port}")
    subscriber.subscribe(b"light")
    assert publisher.poll(5000)
    frame = publisher.recv(copy=False)
    assert connection_on(connection_of(frame), port) is not None, "ZMQ_SRCFD names no connection of ours"
    subscriber.close(linger=0)
    assert publisher.poll(5000)
    assert connection_of(publisher.recv(copy=False)) == -1
    publisher.close()


def test_only_one_frame_that_starts_with_0_or_1_is_a_subscription() -> None:
    """What else a peer sends an XPUB (more frames, another first byte, nothing) is no subscription of anything."""
    assert Subscription.parse([b"\x01light"]) == Subscription(True, b"light")
    assert Subscription.parse([b"\x00"]) == Subscription(False, b"")
    for frames in ([b"\x01light", b"more"], [b"light"], [b""], []):
        assert Subscription.parse(frames) is None


def test_the_subscription_cap_keeps_nothing_of_a_connection_once_it_is_gone(context: zmq.Context) -> None:
    """[P6] What the cap holds of each connection, held and cut alike, goes with the connection (else it would
    grow with every peer that ever came), and the memory is handed back soon after, once for all that go
    meanwhile."""
    publisher, port = verbose_xpub(context)
    gone = publisher.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    asked: list[tuple[float, object]] = []  # what the cap asks the loop to run later
    cap = SubscriptionCap(publisher, "TEST", lambda delay, callback: asked.append((delay, callback)))
    for count in (3, SUBSCRIPTIONS_PER_PEER + 1):  # one peer within the cap, one cut
        subscriber = context.socket(zmq.SUB)
        subscriber.connect(f"tcp://127.0.0.1:{port}")
        for i in range(count):
            subscriber.subscribe(f"topic-{i}")
        subscribed = 0
        while subscribed < count:  # the unsubscribes libzmq makes for the peer gone before come first
            assert publisher.poll(5000)
            frame = publisher.recv(copy=False)
            subscription = Subscription.parse([frame.bytes])
            assert subscription is not None
            cap.allows(subscription, connection_of(frame))
            subscribed += subscription.on
        assert (len(cap.held), len(cap.cut)) == ((1, 0) if count == 3 else (1, 1))
        subscriber.close(linger=0)
        assert gone.poll(5000)
        cap.record(event := gone.recv_multipart())
        assert (cap.held, cap.cut) == ({}, set())
        assert asked == [(MEMORY_BACK_AFTER, cap._memory_back)]  # the second, while the first is due: no more
    asked.pop()[1]()
    cap.record(event)  # another connection gone, after it ran: asked again
    assert asked == [(MEMORY_BACK_AFTER, cap._memory_back)]
    gone.close()
    publisher.close(linger=0)


def test_the_subscription_cap_lets_a_connection_hold_its_allowance_and_counts_what_libzmq_frees(
    context: zmq.Context,
) -> None:
    """[P6] SUBSCRIPTIONS_PER_PEER distinct subscriptions per connection, repeats of them too; the next is refused
    and the connection cut, and so is all that comes after on it. libzmq's own unsubscribes (of connections gone)
    are handed up, and each SUBSCRIPTIONS_PER_PEER of them ask for the memory they freed to be handed back."""
    publisher, port = verbose_xpub(context)
    asked: list[tuple[float, object]] = []
    cap = SubscriptionCap(publisher, "TEST", lambda delay, callback: asked.append((delay, callback)))
    subscriber = context.socket(zmq.SUB)
    subscriber.connect(f"tcp://127.0.0.1:{port}")
    prefixes = [f"topic-{i}".encode() for i in range(SUBSCRIPTIONS_PER_PEER)] + [b"topic-0", b"one-too-many"]
    for prefix in prefixes:
        subscriber.subscribe(prefix)
    allowed = []
    for _ in prefixes:  # the repeat reaches us too: XPUB_VERBOSE
        assert publisher.poll(5000)
        frame = publisher.recv(copy=False)
        allowed.append(cap.allows(Subscription(True, frame.bytes[1:]), descriptor := connection_of(frame)))
    assert allowed == [True] * (SUBSCRIPTIONS_PER_PEER + 1) + [False]
    assert len(cap.cut) == 1 and not asked
    # one libzmq read before the cut, still queued: nobody to answer now, whether or not libzmq has closed it yet
    assert not cap.allows(Subscription(True, b"topic-0"), descriptor)
    subscriber.close(linger=0)

    for _ in range(2):  # and again once it has run: counted afresh
        for _ in range(SUBSCRIPTIONS_PER_PEER - 1):
            assert cap.allows(Subscription(False, b"topic-0"), -1)
        assert not asked
        assert cap.allows(Subscription(False, b"topic-0"), -1)
        assert asked == [(MEMORY_BACK_AFTER, cap._memory_back)]
        asked.pop()[1]()
    publisher.close(linger=0)


def test_each_cut_is_said_within_its_own_peers_allowance(
    context: zmq.Context, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[P6] A peer cut again and again has LINES_PER_SECOND lines of it said a second; another peer's cut, that
    same second, is said all the same."""
    monkeypatch.setattr(logs.peer_warnings, "peers", OrderedDict())
    monkeypatch.setattr(logs.peer_warnings, "clock", lambda: 0.0)  # all in one second, however long it takes
    publisher, port = verbose_xpub(context)
    cap = SubscriptionCap(publisher, "TEST", lambda delay, callback: None)
    subscribers = []
    for source in ["127.0.0.1"] * (logs.LINES_PER_SECOND + 1) + ["127.0.0.2"]:
        subscriber = context.socket(zmq.SUB)
        subscriber.connect(f"tcp://{source}:0;127.0.0.1:{port}")
        for i in range(SUBSCRIPTIONS_PER_PEER + 1):
            subscriber.subscribe(f"topic-{i}")
        subscribers.append(subscriber)
        subscribed = 0
        while subscribed <= SUBSCRIPTIONS_PER_PEER:  # libzmq's unsubscribes of the connection cut before come too
            assert publisher.poll(5000)
            frame = publisher.recv(copy=False)
            subscription, descriptor = Subscription.parse([frame.bytes]), connection_of(frame)
            assert subscription is not None
            cap.allows(subscription, descriptor)
            subscribed += subscription.on and descriptor >= 0
    said = [r.getMessage() for r in caplog.records if "cut the connection" in r.getMessage()]
    line = "TEST cut the connection of {}: more than {} distinct subscriptions (SUBSCRIPTIONS_PER_PEER)"
    flood, other = (line.format(peer, SUBSCRIPTIONS_PER_PEER) for peer in ("127.0.0.1", "127.0.0.2"))
    assert said == [flood] * logs.LINES_PER_SECOND + [other]
    for subscriber in subscribers:
        subscriber.close(linger=0)
    publisher.close(linger=0)


def test_memory_freed_in_the_middle_of_the_heap_is_handed_back() -> None:
    """glibc keeps what is freed below memory still in use: a publisher that once held a flood would stay that big."""

    def rss_mib() -> float:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024

    before = rss_mib()
    blocks = [bytes(1000 + i % 7) for i in range(100_000)]  # malloc's, not Python's small-object pools
    kept = blocks[::50]
    peak = rss_mib()
    del blocks
    give_back_memory()
    assert rss_mib() - before < (peak - before) / 2
    assert len(kept) == 2_000  # still in use all the way up the heap, so it could not shrink from the top


def test_shut_down_ends_a_connection_and_lets_one_already_gone_be() -> None:
    """[P6] A connection over its cap is shut down by its descriptor, which may have closed meanwhile."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        shut_down(ours.fileno())
        assert theirs.recv(1) == b""  # the peer sees the end
        assert ours.fileno() >= 0  # shut down, not closed: libzmq closes what it owns
    never_open = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # every descriptor is below the limit
    shut_down(never_open)  # gone: nothing to do, nothing raised
    read, write = os.pipe()
    try:
        shut_down(read)  # no socket: left as it is
        os.write(write, b"x")
        assert os.read(read, 1) == b"x"
    finally:
        os.close(read)
        os.close(write)
