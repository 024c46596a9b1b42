"""swarm/stack.py: the compose project, translated to the form `docker stack deploy` reads, and nothing more."""

from __future__ import annotations

import importlib.util

import pytest

from tests.support.base import ROOT

spec = importlib.util.spec_from_file_location("stack", ROOT / "swarm" / "stack.py")
stack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stack)


def project(**service: object) -> dict:
    """A project as `docker compose config --format json` writes it, with one service."""
    return {"name": "smarthome", "x-swarm": {}, "services": {"toaster": {"image": "sha256:1", **service}}}


def test_it_writes_what_the_3x_schema_wants_and_drops_what_swarm_never_uses() -> None:
    translated = stack.to_stack(
        project(
            build={"context": "."},
            profiles=["broker"],
            entrypoint=None,
            ports=[{"mode": "host", "target": 8080, "published": "8080", "protocol": "tcp"}],
            deploy={"resources": {"limits": {"cpus": 0.5, "memory": "67108864"}}},
        )
    )
    assert translated == {
        "services": {
            "toaster": {
                "image": "sha256:1",
                "ports": [{"mode": "host", "target": 8080, "published": 8080, "protocol": "tcp"}],
                "deploy": {"resources": {"limits": {"cpus": "0.5", "memory": "67108864"}}},
            }
        }
    }


def test_a_port_bound_to_one_address_is_refused_not_widened() -> None:
    loopback = {"mode": "ingress", "host_ip": "127.0.0.1", "target": 5558, "published": "5558"}
    with pytest.raises(stack.StackError, match=r"toaster: port 5558 is bound to 127\.0\.0\.1"):
        stack.to_stack(project(ports=[loopback]))
