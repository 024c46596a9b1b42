"""CurveZMQ on every connection, the allow-list and who may say what, on real sockets on loopback (fast tier).

A peer with an unknown key, or none, gets nothing and injects nothing; a known key may publish only its
own topics, under its own name; only the commanders (web, host tools) may command.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import zmq
from smarthome.core.config import load_config
from smarthome.core.envelope import Message, encode
from smarthome.core.identity import TOOLS, Identity
from smarthome.core.keys import (
    KEYS_ENV,
    SECRET_KEY_ENV,
    TOKEN_FILE_ENV,
    KeyRing,
    Keys,
    KeysError,
    Policy,
    answer_zap,
    token_file,
)
from smarthome.core.logs import LINES_PER_SECOND

from tests.support.base import BROKER_CONFIG, SHIPPED_CONFIG, wait_until
from tests.support.peers import with_key
from tests.support.processes import ServiceProcess, endpoint, loopback_config

Start = Callable[..., ServiceProcess]
REFUSED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def refused(sock: zmq.Socket, endpoint: str) -> None:
    """Connect `sock` to `endpoint` and wait until the handshake fails: the server would not have it."""
    monitor = sock.get_monitor_socket(REFUSED)
    sock.connect(endpoint)
    wait_until(lambda: monitor.poll(100), f"the handshake at {endpoint} to be refused")
    event, _ = struct.unpack("=HI", monitor.recv_multipart()[0])
    assert event & REFUSED


def stranger(context: zmq.Context, kind: int, config: Path, server: str) -> zmq.Socket:
    """A socket with a key of its own, not on the allow-list (it does pin the real server's key)."""
    sock = with_key(context.socket(kind), config, server=server)
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    return sock


def test_the_policy_says_why_it_refuses_whatever_key_sent_it() -> None:
    """[A1] The tools may say any declared topic; a service's key speaks as that service, of its own topics; a
    key the config has no service for (one left in the keys folder) publishes nothing; a broker passes on."""
    policy = Policy(load_config(SHIPPED_CONFIG))
    assert policy.refuses(TOOLS, f"{TOOLS}@h", "light-set") is None
    assert policy.refuses(TOOLS, f"{TOOLS}@h", "lamp") == "'lamp' is not a declared topic"
    assert policy.refuses("toaster", "toaster@h", "toast") is None
    assert policy.refuses("toaster", "coffee-maker@h", "coffee") == "toaster sent as coffee-maker@h"
    assert policy.refuses("toaster", "toaster@h", "coffee") == "toaster may not publish 'coffee'"
    assert policy.refuses("kettle", "kettle@h", "toast") == "kettle may not publish 'toast'"
    assert Policy(load_config(BROKER_CONFIG)).refuses("broker", "toaster@h", "coffee") is None


def test_a_zap_handler_that_would_wait_is_a_bug_said_as_one() -> None:
    """The poller loop answers ZAP in one step: a handler that waits would hold every handshake, so it is refused."""

    class Waiting:
        async def handle_zap_message(self, frames: list[bytes]) -> None:
            await asyncio.sleep(0)

    with pytest.raises(RuntimeError) as refused:
        answer_zap(Waiting(), [])  # type: ignore[arg-type]
    assert str(refused.value) == "the ZAP handler waited, which a key-ring lookup never does"


def test_an_unknown_key_or_none_gets_nothing_and_injects_nothing(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    config = loopback_config(tmp_path)
    switch = run_service("light-switch", config)
    switch.wait_for("LIGHT SWITCH started")
    light, commands = endpoint(config, "light-switch"), endpoint(config, "light-switch", "commands.bind")

    known = with_key(context.socket(zmq.SUB), config, server="light-switch")  # the control: a known key
    known.subscribe(b"")
    known.connect(light)
    for sock in (stranger(context, zmq.SUB, config, "light-switch"), context.socket(zmq.SUB)):
        sock.subscribe(b"")
        refused(sock, light)
    wait_until(lambda: known.poll(100), "the known key to get the light's heartbeat")
    assert known.recv_multipart()[0] == b"heartbeat"  # the switch's life first [P2], then its state
    wait_until(lambda: known.poll(100), "the known key to get the light's state")
    assert json.loads(known.recv_multipart()[1])["body"] == {"state": "ON"}

    for sock in (stranger(context, zmq.PUB, config, "light-switch"), context.socket(zmq.PUB)):
        refused(sock, commands)
        for _ in range(10):
            sock.send_multipart(encode(Message("light-set", "web@evil", 1, 1, time.time(), {"state": "OFF"})))
    switch.wait_for("LIGHT SWITCH has a new subscriber")  # the known subscriber was served meanwhile
    assert switch.count("switched") == 0


def commander(context: zmq.Context, config: Path, key: str, at: str, server: str) -> zmq.Socket:
    """A publisher with the key of `key`, connected to `at`, once that subscriber is there."""
    sock = with_key(context.socket(zmq.XPUB), config, key, server=server)
    sock.connect(at)
    wait_until(lambda: sock.poll(100), f"a subscriber at {at}")
    return sock


def test_an_appliance_key_cannot_command_nor_speak_for_another(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    config = loopback_config(tmp_path)
    switch = run_service("light-switch", config)
    switch.wait_for("LIGHT SWITCH started")
    toaster = commander(context, config, "toaster", endpoint(config, "light-switch", "commands.bind"), "light-switch")
    toaster.send_multipart(encode(Message("light-set", "toaster@x", 1, 1, time.time(), {"state": "OFF"})))
    switch.wait_for("dropped a message on 'light-set': toaster may not publish 'light-set'")
    toaster.send_multipart(encode(Message("light-set", "web@x", 1, 2, time.time(), {"state": "OFF"})))
    switch.wait_for("dropped a message on 'light-set': toaster sent as web@x")
    assert switch.count("switched") == 0

    web = commander(context, config, "web", endpoint(config, "light-switch", "commands.bind"), "light-switch")
    web.send_multipart(encode(Message("light-set", "web@x", 1, 1, time.time(), {"state": "OFF"})))
    switch.wait_for("LIGHT SWITCH switched OFF by web@x")  # the same command from a commander's key


def test_a_spoofed_sender_is_dropped_where_it_comes_in_the_broker(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    config = loopback_config(tmp_path, BROKER_CONFIG)
    broker = run_service("broker", config)
    broker.wait_for("BROKER started")
    listener = with_key(context.socket(zmq.SUB), config, server="broker")
    listener.subscribe(b"light")
    listener.connect(endpoint(config, "broker", "subscribers"))
    broker.wait_for("BROKER subscribe 'light'")
    coffee = commander(context, config, "coffee-maker", endpoint(config, "broker", "publishers"), "broker")
    # With seq 2**62 it would once have outranked the real switch's every message until the switch restarted.
    coffee.send_multipart(encode(Message("light", "light-switch@evil", 1, 2**62, time.time(), {"state": "OFF"})))
    broker.wait_for("BROKER dropped a message on 'light': coffee-maker sent as light-switch@evil")
    coffee.send_multipart([b"light", b"not json"])  # [M8] and what it cannot read, it says so of the same peer
    broker.says("BROKER dropped a malformed message: topic 'light': not valid JSON")
    tools = commander(context, config, "tools", endpoint(config, "broker", "publishers"), "broker")
    tools.send_multipart(encode(Message("light", "smarthome-cli@x", 1, 1, time.time(), {"state": "ON"})))
    wait_until(lambda: listener.poll(100), "the operator's message through the broker")
    assert json.loads(listener.recv_multipart()[1])["sender"] == "smarthome-cli@x"  # and not the spoof before it


def test_one_peers_flood_of_bad_messages_hides_no_line_of_anothers_at_the_broker(
    tmp_path: Path, run_service: Start, context: zmq.Context
) -> None:
    """Each of the broker's lines about what a peer sent has its allowance per peer (its key): the coffee maker's
    key flooding every kind of bad message leaves the toaster's own lines, one of each kind, as they are."""
    config = loopback_config(tmp_path, BROKER_CONFIG)
    broker = run_service("broker", config)
    listener = with_key(context.socket(zmq.SUB), config, server="broker")
    listener.subscribe(b"")
    listener.connect(endpoint(config, "broker", "subscribers"))
    broker.wait_for("BROKER subscribe all topics")
    at = endpoint(config, "broker", "publishers")
    coffee, toaster = (commander(context, config, key, at, "broker") for key in ("coffee-maker", "toaster"))

    def bad(state: str, seq: int) -> list[list[bytes]]:  # one of each kind, on the peer's own state topic
        sender = f"{'coffee-maker' if state == 'coffee' else 'toaster'}@x"
        return [
            [state.encode(), b"{" * seq],  # malformed
            encode(Message(f"{state}ing", sender, 1, seq, time.time(), {"status": True})),  # undeclared
            encode(Message("light", "light-switch@evil", 1, seq, time.time(), {"state": "OFF"})),  # not theirs
            encode(Message(state, sender, 1, seq, time.time(), {"status": "maybe"})),  # a state it cannot keep
        ]

    for seq in range(1, 4 * LINES_PER_SECOND):
        for frames in bad("coffee", seq):
            coffee.send_multipart(frames)
    broker.wait_for("BROKER dropped a message on 'light': coffee-maker sent as light-switch@evil")  # the flood is in
    for frames in bad("toast", 1):
        toaster.send_multipart(frames)
    broker.says("BROKER dropped a malformed message: topic 'toast': not valid JSON")
    broker.says("BROKER dropped a message on 'toasting': not a declared topic")
    broker.says("BROKER dropped a message on 'light': toaster sent as light-switch@evil")
    broker.says("BROKER keeps no message it could not read: topic 'toast': expected 'bool', got 'str' at 'body.status'")
    assert len(broker.messages()) < 3 * LINES_PER_SECOND, broker.output()  # the flood's lines: held back


def test_keys_made_for_compose_are_the_services_user_s_and_the_tools_key_the_host_user_s(tmp_path: Path) -> None:
    # `smarthome keys` in compose's one-shot `keys` service runs as root: the services' user must read theirs,
    # and the host's user (who owns the folder) the tools' key.
    folder = tmp_path / "made" / "keys"  # not there yet, nor its parent
    folder.parent.mkdir()
    os.chown(folder.parent, 4242, -1)
    ring = KeyRing(folder)
    assert ring.ensure(["light-switch", TOOLS], owner=1000) == ["light-switch", TOOLS]
    folder.chmod(0o755)
    os.chown(folder, 4242, -1)
    assert ring.ensure(["light-switch", TOOLS], owner=1000) == []  # none missing: none made
    switch, tools = folder / "light-switch.key_secret", folder / f"{TOOLS}.key_secret"
    assert (switch.stat().st_uid, tools.stat().st_uid) == (1000, 4242)
    assert switch.stat().st_gid == tools.stat().st_gid == os.getegid()  # the group is left as it was
    assert stat.S_IMODE(switch.stat().st_mode) == stat.S_IMODE(tools.stat().st_mode) == 0o600
    assert (folder / ".lock").exists()  # services starting at once take it in turn
    # The dashboard's token: the service's user reads it, and the host's user (by the folder's group), no one else.
    assert ring.ensure_token("web", owner=1000) and not ring.ensure_token("web", owner=1000)
    token = folder / "web.token"
    assert (token.stat().st_uid, token.stat().st_gid) == (1000, folder.stat().st_gid)
    assert stat.S_IMODE(token.stat().st_mode) == 0o640 and len(ring.token("web")) == 43
    nested = KeyRing(tmp_path / "a" / "b")
    assert nested.ensure(["toaster"]) == ["toaster"]  # parents made too
    assert KeyRing(tmp_path / "c" / "d").ensure_token("web")  # a token first, its parents too
    assert nested.pair("toaster")[0] == nested.public("toaster")


def test_a_service_s_own_pair_is_its_swarm_secret_else_in_the_keys_beside_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without $SMARTHOME_KEYS a service's keys are in keys/ beside its config's folder, made on its first start. In
    a swarm its own pair is a secret of its own ($SMARTHOME_SECRET_KEY). A key file with no key in it is one line
    naming it, where it is needed; where a peer's key is looked up it is nobody's, and crashes nothing."""
    monkeypatch.delenv(KEYS_ENV, raising=False)
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    (tmp_path / "config").mkdir()
    config = load_config(shutil.copy(SHIPPED_CONFIG, tmp_path / "config"))
    ring = KeyRing(tmp_path / "keys")

    def refusal(call: Callable[[], object]) -> str:
        with pytest.raises(KeysError) as raised:
            call()
        return str(raised.value)

    keys = Keys(Identity("toaster", config))
    assert (keys.public, keys.secret) == ring.pair("toaster")

    (tmp_path / "secret").mkdir()
    public_file, secret_file = zmq.auth.create_certificates(tmp_path / "secret", "toaster")
    monkeypatch.setenv(SECRET_KEY_ENV, secret_file)
    keys = Keys(Identity("toaster", config))
    assert (keys.public, keys.secret) == zmq.auth.load_certificate(secret_file) != ring.pair("toaster")
    monkeypatch.setenv(SECRET_KEY_ENV, public_file)
    said = refusal(lambda: Keys(Identity("toaster", config)))
    assert said == f"{tmp_path / 'secret'}: no CurveZMQ keys: toaster.key holds no secret key"
    monkeypatch.delenv(SECRET_KEY_ENV)
    (tmp_path / "keys" / "toaster.key_secret").write_text("")
    said = refusal(lambda: Keys(Identity("toaster", config)))
    assert said == f"{tmp_path / 'keys'}: no CurveZMQ keys: toaster.key_secret holds no public key"

    (tmp_path / "keys" / "light-switch.key").write_text("")  # being written, say
    assert ring.name_of(keys.public) is None  # and no crash on the way
    assert ring.name_of(ring.public("toaster")) == "toaster"
    problem = "no CurveZMQ key of the server of tcp://light-switch:5556: light-switch.key holds no public key"
    assert refusal(lambda: keys.server_key("tcp://light-switch:5556")) == f"{tmp_path / 'keys'}: {problem}"


def test_the_dashboard_token_is_its_configured_file_else_the_swarm_secret_else_beside_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMARTHOME_KEYS", str(tmp_path / "keys"))
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    config = load_config(SHIPPED_CONFIG)
    assert token_file(config, "web") == tmp_path / "keys" / "web.token"
    monkeypatch.setenv(TOKEN_FILE_ENV, "/run/secrets/smarthome.token")  # a swarm secret (swarm/stack.py)
    assert token_file(config, "web") == Path("/run/secrets/smarthome.token")
    web = msgspec.structs.replace(config.services["web"], access_token_file=str(tmp_path / "mine.token"))
    configured = msgspec.structs.replace(config, services={**config.services, "web": web})
    assert token_file(configured, "web") == tmp_path / "mine.token"  # the config's own choice comes first
