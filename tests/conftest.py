"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import docker
import pytest
import zmq.asyncio
from support import ServiceProcess, Stack, unavailable


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


@pytest.fixture
async def zmq_context() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


# --- the Docker tier ---


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
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
