"""Where the project is, what the tests wait for and how: polling with a deadline, never a guessed sleep."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/support/base.py
SHIPPED_CONFIG = ROOT / "config" / "smarthome.yml"
BROKER_CONFIG = ROOT / "config" / "smarthome.broker.yml"
# Seconds any awaited condition may take before a test fails; the mutation run lowers it, so that a mutant that
# breaks a wait is told in seconds (each condition takes well under one when the code is right).
DEADLINE = float(os.environ.get("SMARTHOME_TEST_DEADLINE", "15"))
BROKER_ROUTINE = ["broker", "light-switch", "kitchen-light", "coffee-maker", "toaster", "smart-mirror", "radio"]
ALL_READY = "MIRROR coffee=ready toast=ready"
HOST = socket.gethostname()  # the instance part of a local service's sender: light-switch@HOST
LABELS = {
    "light-switch": "LIGHT SWITCH",
    "coffee-maker": "COFFEE MAKER",
    "toaster": "TOASTER",
    "smart-mirror": "MIRROR",
}
ALL_IDLE = "MIRROR coffee=idle toast=idle"
SMARTHOME = str(Path(sys.executable).with_name("smarthome"))  # the command `pip install` made, next to python


def unavailable(message: str) -> None:
    """A missing prerequisite: fails the test with CI=true, where every tier must run; skips elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def poll(condition: Callable[[], Any], timeout: float) -> Any:
    """Poll `condition` until it returns something truthy (returned), or None at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if result := condition():
            return result
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)  # ok: the pause between polls of a deadline loop


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE, describe=lambda: "") -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` (and `describe()`) at the deadline."""
    result = poll(condition, timeout)
    if not result:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{describe()}")
    return result


async def wait_until_async(
    condition: Callable[[], Any], what: str, timeout: float = DEADLINE, describe=lambda: ""
) -> Any:
    """wait_until for async tests: the event loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{describe()}")
        await asyncio.sleep(0.02)  # ok: the pause between polls of a deadline loop
    return result


def stamp(line: str) -> float | None:
    """The UTC time a service logged `line` at (`2026-03-01T07:00:00.123Z LEVEL message`), or None."""
    try:
        when = datetime.datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return when.replace(tzinfo=datetime.UTC).timestamp()
