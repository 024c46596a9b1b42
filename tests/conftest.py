"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import ServiceProcess


@pytest.fixture
def run_service(request: pytest.FixtureRequest) -> Iterator[Callable[[str, Path], ServiceProcess]]:
    """Start services; stop them all at the end, printing their output if the test failed."""
    started: list[ServiceProcess] = []

    def start(name: str, config: Path) -> ServiceProcess:
        started.append(ServiceProcess(name, config))
        return started[-1]

    yield start
    for service in started:
        service.stop()
    print("\n".join(s.output() for s in started))  # shown by pytest only when the test failed
