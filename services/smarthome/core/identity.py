"""What a running service is, apart from the loop that runs it: name, label, sender, life, config, health."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket

from smarthome.core.config import Config, ServiceConfig

INSTANCE_ENV = "SMARTHOME_INSTANCE"  # what tells instances of one service apart; default: the host (container) name
HEALTH_FILE_ENV = "SMARTHOME_HEALTH_FILE"  # touched by a live loop; the compose healthcheck reads its age
TOOLS = "tools"  # the CurveZMQ key the host tools (`smarthome sub|pub|light`) share
HEALTH_TOUCH_EVERY = 0.5  # seconds between touches, whatever else the loop does (the healthcheck allows 2 s)


class HealthFile:
    """A file the live loop touches every HEALTH_TOUCH_EVERY; the healthcheck fails when it is old. No path: no-op."""

    def __init__(self) -> None:
        self.path = os.environ.get(HEALTH_FILE_ENV)

    def touch(self) -> None:
        if self.path:
            with open(self.path, "a"):
                os.utime(self.path)

    def remove(self) -> None:
        if self.path:
            with contextlib.suppress(OSError):
                os.remove(self.path)


class Identity:
    """Who is speaking: the same for a poller service, the asyncio web forwarder and a host tool."""

    def __init__(self, name: str, config: Config, label: str | None = None) -> None:
        self.name = name
        self.config = config
        self.spec: ServiceConfig | None = config.services.get(name)  # None for the host tools
        self.key = name if self.spec else TOOLS  # whose CurveZMQ keypair it speaks with
        self.label = label or (self.spec.name if self.spec else name)  # how log lines name this service
        # Scaled instances differ by container hostname, which a restart keeps and a recreate changes.
        self.sender = f"{name}@{os.environ.get(INSTANCE_ENV) or socket.gethostname()}"
        self.life = 1 + secrets.randbelow(2**53 - 1)  # [M4] this life of the sender; no clock in it
        self.health = HealthFile()
