"""Fixtures shared by the test modules.

The Docker tier's wheels (docker, playwright) are imported only where used, so the fast tier collects
and runs without them (`pip install -e '.[fast]'`).
"""

from __future__ import annotations

import gc
import importlib.util
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import zmq
import zmq.asyncio

from tests.support.base import unavailable
from tests.support.processes import ServiceProcess
from tests.support.stack import HEALTHCHECK_INTERVAL, Stack

if TYPE_CHECKING:
    import docker

# The Docker tier waits on health (`up --wait`, restarts, swarm updates): its stacks are checked every second,
# not every 30 s as compose ships it (there, each check's cost in the engine matters more than a quick first one).
os.environ.setdefault(HEALTHCHECK_INTERVAL, "1s")

# Docker-tier modules that import its wheels at module level: without the wheel, leave them out (in CI,
# where every tier must run, they stay and fail).
collect_ignore = [
    module
    for module, wheel in (("test_dashboard.py", "playwright"), ("test_swarm.py", "docker"))
    if importlib.util.find_spec(wheel) is None and os.environ.get("CI") != "true"
]


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    """A zmq context for the test's own sockets, closed at the end."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def run_service() -> Iterator[Callable[..., ServiceProcess]]:
    """Start services (or `smarthome` commands: name, config, *args); stop them all at the end.

    Their output is printed at teardown, which pytest shows when the test failed.
    """
    started: list[ServiceProcess] = []

    def start(name: str, config: Path, *command: str, env: dict[str, str] | None = None) -> ServiceProcess:
        started.append(ServiceProcess(name, config, *command, env=env))
        return started[-1]

    yield start
    for service in started:
        service.stop()
    print("\n".join(s.output() for s in started))


@pytest.fixture
async def zmq_context() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


# --- the Docker tier ---


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    try:
        import docker
    except ImportError:
        unavailable("no docker wheel: pip install -e '.[test]'")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        unavailable(f"no Docker engine: {exc} (run `bash .ci/provision-docker`)")
    return client


@pytest.fixture(scope="session")
def built(engine: docker.DockerClient) -> None:
    Stack(engine).compose("build")


@pytest.fixture
def stack(engine: docker.DockerClient, built: None, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A fresh project; `@pytest.mark.parametrize("stack", [files], indirect=True)` picks other compose files."""
    stack = Stack(engine, *getattr(request, "param", ()))
    try:
        yield stack
    finally:
        print(stack.all_logs())  # pytest shows it when the test failed
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")


def pytest_sessionfinish() -> None:
    """Close every zmq context a failed test left open, without waiting for its unsent messages: at exit pytest
    collects the garbage, and a context collected with sockets still open waits for them for ever (their
    linger), so a run whose code was broken on purpose (tests/mutation/) would never end."""
    for leaked in gc.get_objects():
        if isinstance(leaked, zmq.Context) and not leaked.closed:
            leaked.destroy(linger=0)
