"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import ServiceProcess


@pytest.fixture
def run_service() -> Iterator[Callable[..., ServiceProcess]]:
    """Start services (or `smarthome` commands: name, config, *args); stop them all at the end.

    Their output is printed at teardown, which pytest shows when the test failed.
    """
    started: list[ServiceProcess] = []

    def start(name: str, config: Path, *command: str) -> ServiceProcess:
        started.append(ServiceProcess(name, config, *command))
        return started[-1]

    yield start
    for service in started:
        service.stop()
    print("\n".join(s.output() for s in started))
