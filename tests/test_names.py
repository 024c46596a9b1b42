"""Peers reached by name (core/dialer.py): the runtime looks names up, libzmq only ever gets addresses.

So a lookup that hangs (a resolver cut off: glibc waits its timeout per attempt) stalls no other connection:
libzmq would make it in its one I/O thread, and every connection of the process would wait with it.
Real services on loopback; the hanging resolver is a UDP socket of the test's that never answers, given to
the mirror through a resolv.conf of its own (a mount namespace: root, so that test is in the Docker tier).
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest

from tests.support.base import ALL_READY, unavailable
from tests.support.processes import ServiceProcess, loopback_config

HANGS = 60  # seconds a lookup waits on the silent resolver: far longer than any wait of the test
SILENT_RESOLVER = "127.0.0.2"  # on loopback (all of 127/8 is), port 53: where the mirror sends its queries


def named(tmp_path: Path, hosts: dict[str, str]) -> Path:
    """The shipped config on free ports, each connecting endpoint's host renamed by `hosts` (service -> host)."""
    path = loopback_config(tmp_path)
    text = path.read_text()
    for service, host in hosts.items():
        text = re.sub(rf"tcp://{service}:", f"tcp://{host}:", text)
    path.write_text(text)
    return path


def test_peers_named_by_host_are_reached_by_their_address(tmp_path: Path, run_service) -> None:
    config = named(tmp_path, dict.fromkeys(["light-switch", "coffee-maker", "toaster"], "localhost"))
    as_named = {"SMARTHOME_LOOPBACK": "0"}  # the names stay: localhost, looked up like any other
    services = [run_service(name, config, env=as_named) for name in ["light-switch", "coffee-maker", "toaster"]]
    mirror = run_service("smart-mirror", config, env=as_named)
    mirror.wait_for(ALL_READY)
    mirror.wait_for("MIRROR connected to tcp://localhost:")  # its log names the peer as the config does
    assert all(service.proc.poll() is None for service in services)


@pytest.mark.docker  # the tier that runs as root (.ci/test): no engine needed, but a mount namespace
def test_a_lookup_that_hangs_delays_no_other_connection(tmp_path: Path, run_service) -> None:
    if os.geteuid() != 0:
        unavailable("a resolv.conf of the mirror's own needs a mount namespace: run as root")
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((SILENT_RESOLVER, 53))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {SILENT_RESOLVER}\noptions timeout:{HANGS} attempts:1\n")
    # The coffee maker by a name only the silent resolver could answer; the toaster by its address.
    config = named(tmp_path, {"coffee-maker": "coffee-maker.home.arpa", "toaster": "127.0.0.1"})
    run_service("toaster", config)
    own_resolver = ["unshare", "--mount", "sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "-"]
    mirror = ServiceProcess("smart-mirror", config, env={"SMARTHOME_LOOPBACK": "0"}, wrapper=own_resolver)
    try:
        silent.settimeout(15)
        query, _ = silent.recvfrom(512)  # the lookup began, and hangs
        assert b"coffee-maker" in query
        mirror.says("MIRROR coffee=unknown toast=idle")  # the toaster's connection did not wait for it
        started = time.monotonic()
        assert mirror.stop() == 0  # nor does a stop
        assert time.monotonic() - started < 5
    finally:
        mirror.stop()
        print(mirror.output())
        silent.close()
