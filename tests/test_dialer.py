"""The Dialer (core/dialer.py) on a real poller Loop and real sockets: what it gives libzmq, when it looks a name
up again, and how it follows a name to a new address.

A lookup's answer is what the Dialer acts on, on the loop (`_found`); the lookups themselves here are of a name
that fails at once, without a query leaving the machine ('no such host' has a space: no resolver is asked).
tests/test_names.py runs whole services by name; the Docker tier, a resolver that hangs.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from smarthome.core.config import load_config
from smarthome.core.dialer import EVENTS, Dialer, by_name
from smarthome.core.identity import Identity
from smarthome.core.runtime import Loop

from tests.support.processes import free_port, loopback_config

UNRESOLVABLE = "no such host"  # getaddrinfo refuses it at once, asking no resolver


@pytest.fixture
def loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Loop:
    monkeypatch.setenv("SMARTHOME_LOOPBACK", "1")
    return Loop(Identity("smart-mirror", load_config(loopback_config(tmp_path, curve=False))))


def dialer_on(loop: Loop, endpoint: str) -> tuple[Dialer, zmq.Socket]:
    sock = loop.context.socket(zmq.SUB)
    sock.linger = 0
    sock.subscribe(b"")
    dialer = Dialer(sock, endpoint, "MIRROR", loop.call_later, loop.call_soon_threadsafe)
    loop.watch(sock.get_monitor_socket(EVENTS), dialer.record)
    return dialer, sock


def run_steps(loop: Loop, *steps: tuple[Callable[[], object], Callable[[], None]], seconds: float = 10.0) -> int:
    """Run `loop` through `steps`: each (condition, then) waits for its condition (checked every 10 ms), then
    runs `then`; the loop stops after the last, or after `seconds`. How many steps were done."""
    done = 0

    def check() -> None:
        nonlocal done
        while done < len(steps) and steps[done][0]():
            steps[done][1]()
            done += 1
        if done == len(steps):
            loop.stop()
        else:
            loop.call_later(0.01, check)

    loop.call_later(0, check)
    loop.call_later(seconds, loop.stop)
    loop.run()  # ends by closing every socket of the loop's context
    return done


def publisher(context: zmq.Context, address: str) -> zmq.Socket:
    pub = context.socket(zmq.PUB)
    pub.linger = 0
    pub.bind(address)
    return pub


def received(pub: zmq.Socket, sock: zmq.Socket) -> Callable[[], bool]:
    """A condition that sends on `pub` and tells whether `sock` got it (a PUB drops until connected); what came
    is taken, so the next such condition waits for a message of its own."""

    def check() -> bool:
        pub.send(b"hello")
        if not sock.poll(0):
            return False
        while sock.poll(0):
            sock.recv()
        return True

    return check


def nothing() -> None:
    pass


@pytest.mark.parametrize(
    ("endpoint", "named"),
    [
        ("tcp://light-switch:5556", True),
        ("tcp://localhost:5556", True),
        ("tcp://127.0.0.1:5556", False),
        ("tcp://[::1]:5556", False),
        ("ipc:///tmp/x", False),
        ("inproc://x", False),
    ],
)
def test_only_a_tcp_endpoint_that_names_its_host_is_looked_up(endpoint: str, named: bool) -> None:
    assert by_name(endpoint) is named


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def refusal(host: str) -> str:
    """What the C library says when it will not look `host` up."""
    try:
        socket.getaddrinfo(host, 1, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return exc.strerror
    raise AssertionError(f"{host!r} resolved")


def test_a_name_is_given_to_libzmq_as_its_address(
    loop: Loop, context: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    pub = publisher(context, f"tcp://127.0.0.1:{port}")
    dialer, sock = dialer_on(loop, f"tcp://localhost:{port}")
    dialer.start()
    assert run_steps(loop, (received(pub, sock), nothing)) == 1
    assert dialer.address == f"tcp://127.0.0.1:{port}" and dialer.connected
    assert f"MIRROR connected to tcp://localhost:{port}" in messages(caplog)  # named as the config names it


def test_an_address_is_connected_at_once_and_never_looked_up(loop: Loop, context: zmq.Context) -> None:
    port = free_port()
    pub = publisher(context, f"tcp://127.0.0.1:{port}")
    dialer, sock = dialer_on(loop, f"tcp://127.0.0.1:{port}")
    dialer.start()
    assert dialer.address == f"tcp://127.0.0.1:{port}" and dialer.lookups == 0
    assert run_steps(loop, (received(pub, sock), nothing)) == 1
    assert dialer.lookups == 0 and dialer.next_lookup is None


def test_a_name_that_does_not_resolve_is_looked_up_again_and_logged_once(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dialer, _ = dialer_on(loop, f"tcp://{UNRESOLVABLE}:5556")
    dialer.start()
    first = dialer.looked_up
    assert run_steps(loop, (lambda: dialer.looked_up > first and dialer.lookups == 0, nothing), seconds=5) == 1
    # looked up again, a LOOKUP_EVERY later
    assert dialer.address is None and not dialer.connected
    lines = [line for line in messages(caplog) if "cannot reach" in line]
    reason = refusal(UNRESOLVABLE)  # the C library's own words: they differ between libraries
    assert lines == [f"MIRROR cannot reach tcp://{UNRESOLVABLE}:5556 yet, retrying ({UNRESOLVABLE}: {reason})"]


def test_the_socket_follows_a_name_to_a_new_address_and_only_then(
    loop: Loop, context: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    old = publisher(context, f"tcp://127.0.0.2:{port}")
    new = context.socket(zmq.PUB)
    new.linger = 0
    dialer, sock = dialer_on(loop, f"tcp://{UNRESOLVABLE}:{port}")
    seen: dict[str, object] = {}

    def answer(*addresses: str) -> None:
        """What a lookup of the name hands the loop."""
        dialer.lookups += 1
        dialer._found(list(addresses))

    def late_answer() -> None:  # while connected: the address in use works
        answer("127.0.0.9")
        seen["late"] = dialer.address

    def moved() -> None:  # the name points elsewhere now, as a recreated container's does
        new.bind(f"tcp://127.0.0.3:{port}")
        answer("127.0.0.3", "127.0.0.4")

    def lost_again() -> None:  # lost, and the name still points there among others: it stays
        seen["followed"] = dialer.address
        dialer.connected = False
        answer("127.0.0.4", "127.0.0.3")
        seen["stayed"] = dialer.address

    answer("127.0.0.2")
    steps = run_steps(
        loop,
        (received(old, sock), late_answer),
        (lambda: True, old.close),  # the peer goes
        (lambda: not dialer.connected, moved),
        (received(new, sock), lost_again),
    )
    assert steps == 4, (steps, dialer.address, caplog.text)
    assert seen == {
        "late": f"tcp://127.0.0.2:{port}",
        "followed": f"tcp://127.0.0.3:{port}",
        "stayed": f"tcp://127.0.0.3:{port}",
    }
    said = messages(caplog)
    assert f"MIRROR follows tcp://{UNRESOLVABLE}:{port} to 127.0.0.3" in said
    lost = said.index(f"MIRROR lost tcp://{UNRESOLVABLE}:{port}, reconnecting")
    assert any("cannot reach" in line for line in said[lost:]), said  # told again once lost after connecting


def test_a_peer_that_fails_the_handshake_is_one_warning_and_looked_up_again(
    loop: Loop, context: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    server = publisher(context, f"tcp://127.0.0.1:{port}")  # no CurveZMQ: a CurveZMQ client's handshake fails
    dialer, sock = dialer_on(loop, f"tcp://localhost:{port}")
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.curve_serverkey = zmq.curve_keypair()[0]
    dialer.start()
    failed = f"MIRROR could not open a session with tcp://localhost:{port} (ZMTP or CurveZMQ handshake)"
    seen: dict[str, float] = {}

    def note_failure() -> None:
        seen["failed"] = dialer.looked_up

    steps = run_steps(
        loop,
        (lambda: failed in messages(caplog), note_failure),
        (lambda: dialer.looked_up > seen["failed"], nothing),  # the name is looked up again, within a second
        seconds=5,
    )
    assert steps == 2, messages(caplog)
    assert not dialer.connected
    server.close()
