"""The fault suite (Docker tier): real faults on the real stack, in both wirings, and the stack heals by itself.

After each fault the mirror's summary must equal the truth, with exactly the live instances (no ghosts);
at the end every container exits 0 on `docker compose stop`. Nothing here asserts how fast it heals: the
fault benchmark measures that. Faults: a crash (SIGKILL of a service's process: the restart policy brings
it back), `docker pause`/`unpause`, a network partition while the light changes, a recreate, scaling
up and down, and a broker restart.
"""

from __future__ import annotations

import pytest

from tests.support.base import ALL_IDLE, ALL_READY, BROKER_CONFIG, SHIPPED_CONFIG, wait_until
from tests.support.faults import kill_service, partitioned, paused, restarted_and_healthy
from tests.support.processes import smarthome
from tests.support.stack import WIRINGS, Stack, mirror_shows

pytestmark = pytest.mark.docker
HEAL = 60  # seconds any recovery may take before the test fails (the benchmark measures the real figure)


def mirror_says(stack: Stack, summary: str) -> None:
    wait_until(lambda: stack.logs("smart-mirror").last("MIRROR coffee=") == summary, summary, HEAL, stack.all_logs)


def crash(stack: Stack, service: str) -> None:
    """A crash of the service's process; returns once the restart policy brought it back, healthy."""
    [container] = stack.containers(service)
    restarts = container.attrs["RestartCount"]
    kill_service(container)
    wait_until(
        lambda: restarted_and_healthy(container, restarts), f"{service} restarted and healthy", HEAL, stack.all_logs
    )


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
    with paused(toaster):
        mirror_says(stack, "MIRROR coffee=ready toast=unknown")  # forgotten, not shown as if alive
    mirror_says(stack, ALL_READY)

    with partitioned(stack, toaster):  # while the light changes
        light(config, "off")
        mirror_says(stack, "MIRROR coffee=idle toast=unknown")
    mirror_says(stack, ALL_IDLE)  # the toaster learnt the light went off while it was away
    light(config, "on")
    mirror_says(stack, ALL_READY)

    stack.recreate("toaster", "--wait")  # a new hostname
    mirror_says(stack, ALL_READY)  # one toaster: the old instance is forgotten

    if broker:
        stack.scale("toaster", 3, "--wait")
        wait_until(lambda: mirror_shows(stack, "ready", toasters=3), "3 toasters", HEAL, stack.all_logs)
        stack.scale("toaster", 1, "--wait")
        mirror_says(stack, ALL_READY)  # the two scaled-down instances are gone from the mirror

        listening = stack.logs("broker").count("BROKER subscribe 'light-set'")
        stack.compose("restart", "broker")
        # A command goes once, when a switch listens [P3]: both switches must be back first, or one misses it.
        stack.logs("broker").wait_for("BROKER subscribe 'light-set'", times=listening + 2, timeout=HEAL)
        light(config, "off")
        mirror_says(stack, ALL_IDLE)
        light(config, "on")
        mirror_says(stack, ALL_READY)

    stack.stop_and_check_exit_codes()
