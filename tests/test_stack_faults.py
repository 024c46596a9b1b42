"""The fault suite (Docker tier): real faults on the real stack, in both wirings, and the stack heals by itself.

After each fault the mirror's summary must equal the truth, with exactly the live instances (no ghosts);
at the end every container exits 0 on `docker compose stop`. Nothing here asserts how fast it heals: the
fault benchmark measures that. Faults: a crash (SIGKILL of a service's process: the restart policy brings
it back), `docker pause`/`unpause`, a network partition while the light changes, a recreate, scaling
up and down, and a broker restart.
"""

from __future__ import annotations

import os
import signal

import pytest
from support import (
    ALL_IDLE,
    ALL_READY,
    BROKER_CONFIG,
    BROKER_FILES,
    SHIPPED_CONFIG,
    Stack,
    mirror_shows,
    smarthome,
    wait_until,
)

pytestmark = pytest.mark.docker
WIRINGS = {"direct": ("docker-compose.yml",), "broker": BROKER_FILES}
HEAL = 60  # seconds any recovery may take before the test fails (the benchmark measures the real figure)


def mirror_says(stack: Stack, summary: str) -> None:
    wait_until(lambda: stack.logs("smart-mirror").last("MIRROR coffee=") == summary, summary, HEAL, stack.all_logs)


def crash(stack: Stack, service: str) -> None:
    """SIGKILL the service's own process (not tini): a crash, which the restart policy answers."""
    [container] = stack.containers(service)
    restarts = container.attrs["RestartCount"]
    top = container.top()
    pid, cmd = top["Titles"].index("PID"), top["Titles"].index("CMD")
    [target] = [int(p[pid]) for p in top["Processes"] if p[cmd].startswith("python")]
    os.kill(target, signal.SIGKILL)

    def back() -> bool:
        container.reload()
        return (
            container.attrs["RestartCount"] > restarts
            and container.attrs["State"].get("Health", {}).get("Status") == "healthy"
        )

    wait_until(back, f"{service} to be restarted and healthy", HEAL, stack.all_logs)


def light(config, state: str) -> None:
    result = smarthome(config, "light", state, "--timeout", "30")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("stack", list(WIRINGS.values()), ids=list(WIRINGS), indirect=True)
def test_the_stack_heals_from_every_fault(stack: Stack) -> None:
    broker = "docker-compose.broker.yml" in " ".join(stack.files)
    config = BROKER_CONFIG if broker else SHIPPED_CONFIG
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60")
    mirror_says(stack, ALL_READY)

    for service in ["toaster", "light-switch", "smart-mirror", *(["broker"] if broker else [])]:
        summaries = stack.logs("smart-mirror").count("MIRROR coffee=")
        crash(stack, service)
        if service == "smart-mirror":  # the new mirror has to say it anew
            stack.logs("smart-mirror").wait_for("MIRROR coffee=", times=summaries + 1)
        mirror_says(stack, ALL_READY)

    [toaster] = stack.containers("toaster")
    toaster.pause()  # frozen: its TCP connections stay open, only the missing heartbeats tell
    try:
        mirror_says(stack, "MIRROR coffee=ready toast=unknown")  # forgotten, not shown as if alive
    finally:
        toaster.unpause()
    mirror_says(stack, ALL_READY)

    network = stack.network("home")
    network.disconnect(toaster)  # a partition while the light changes
    try:
        light(config, "off")
        mirror_says(stack, "MIRROR coffee=idle toast=unknown")
    finally:
        network.connect(toaster, aliases=["toaster"])
    mirror_says(stack, ALL_IDLE)  # the toaster learnt the light went off while it was away
    light(config, "on")
    mirror_says(stack, ALL_READY)

    stack.compose("up", "--detach", "--wait", "--force-recreate", "--no-deps", "toaster")  # a new hostname
    mirror_says(stack, ALL_READY)  # one toaster: the old instance is forgotten

    if broker:
        stack.compose("up", "--detach", "--wait", "--no-recreate", "--scale", "toaster=3", "toaster")
        wait_until(lambda: mirror_shows(stack, "ready", toasters=3), "3 toasters", HEAL, stack.all_logs)
        stack.compose("up", "--detach", "--wait", "--no-recreate", "--scale", "toaster=1", "toaster")
        mirror_says(stack, ALL_READY)  # the two scaled-down instances are gone from the mirror

        stack.compose("restart", "broker")
        light(config, "off")
        mirror_says(stack, ALL_IDLE)
        light(config, "on")
        mirror_says(stack, ALL_READY)

    stack.stop_and_check_exit_codes()
