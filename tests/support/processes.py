"""Services as real local processes on loopback: configs on free ports, the `smarthome` command, their logs."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import smarthome as code_package
import yaml

from .base import DEADLINE, SHIPPED_CONFIG, SMARTHOME, wait_until

_handed_out: set[int] = set()  # ports given to a test already: a service may not have bound them yet


def free_port() -> int:
    """A port free on 127.0.0.1 now, never handed out before in this run, and below the kernel's ephemeral
    range: a port from that range (what binding port 0 gives) can be taken by any outgoing connection's source
    port between this check and the service's own bind."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    below = ephemeral_low if ephemeral_low > 21_000 else 30_000  # a range starting low: the least busy part
    while True:
        port = random.randrange(20_000, below)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def loopback_config(tmp_path: Path, source: Path = SHIPPED_CONFIG, **changes: Any) -> Path:
    """A shipped config with every port moved to a free one (so tests never collide) and `changes` applied.

    Ports are endpoint ports and `port` keys; a shipped port moves to the same free port wherever it appears.
    `changes` maps a dotted key path to a new value, e.g. {"services.toaster.prep_time": 0}.
    """
    ports: dict[int, int] = {}

    def move(port: int) -> int:
        return ports.setdefault(port, free_port())

    def moved(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: moved(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [moved(v) for v in node]
        if isinstance(node, str):
            return re.sub(
                r"^(tcp://[^:]+):(\d+)$", lambda m: f"{m[1]}:{ports.setdefault(int(m[2]), free_port())}", node
            )
        if key == "port" and isinstance(node, int):
            return move(node)
        return node

    config = moved(yaml.safe_load(source.read_text()))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def endpoint(config_path: Path, service: str, key: str = "publish.bind") -> str:
    """The endpoint at `key` of `service` in the config, made connectable on loopback."""
    node = yaml.safe_load(config_path.read_text())["services"][service]
    for part in key.split("."):
        node = node[part]
    return node.replace("*", "127.0.0.1")


def smarthome_env(config: Path) -> dict[str, str]:
    """The environment for `python -m smarthome ...` on loopback with `config` (and its keys, whatever
    --config a command is given), running the very code the tests import (under mutation testing: the mutants)."""
    code = str(Path(code_package.__file__).resolve().parents[1])
    return {
        **os.environ,
        "SMARTHOME_CONFIG": str(config),
        "SMARTHOME_KEYS": str(config.resolve().parent.parent / "keys"),  # where keys_dir() looks for `config`
        "SMARTHOME_LOOPBACK": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")])),
    }


def smarthome(config: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the installed `smarthome` command to completion."""
    command = [SMARTHOME, *args]
    return subprocess.run(command, env=smarthome_env(config), capture_output=True, text=True, timeout=timeout)


class LogReader:
    """Reads one service's log lines, wherever it runs: a local process or the containers of a compose service."""

    name: str
    deadline = DEADLINE

    def log_lines(self) -> list[str]:
        raise NotImplementedError

    def output(self) -> str:
        return "\n".join(f"{self.name} | {line}" for line in self.log_lines())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.log_lines())

    def messages(self) -> list[str]:
        """Each log line's message: what follows its time and level."""
        return [re.split(r"\s+", line, maxsplit=2)[-1] for line in self.log_lines()]

    def last(self, prefix: str) -> str:
        """The message of the latest log line whose message (after time and level) starts with `prefix`."""
        return next((m for m in reversed(self.messages()) if m.startswith(prefix)), "")

    def says(self, message: str, times: int = 1, timeout: float | None = None) -> None:
        """Wait until `message` is, to the letter, the message of a log line (of `times` lines)."""
        wait_until(
            lambda: self.messages().count(message) >= times,
            f"{self.name} to say {message!r} x{times}",
            timeout or self.deadline,
            self.output,
        )

    def wait_for(self, text: str, times: int = 1, timeout: float | None = None) -> None:
        wait_until(
            lambda: self.count(text) >= times,
            f"{self.name} to log {text!r} x{times}",
            timeout or self.deadline,
            self.output,
        )


class ServiceProcess(LogReader):
    """One service run as `python -m smarthome run NAME` on loopback, its output collected line by line."""

    def __init__(
        self, name: str, config: Path, *command: str, env: dict[str, str] | None = None, wrapper: list[str] = ()
    ) -> None:
        """`wrapper`: a command that runs the service's command line (given as its last arguments)."""
        self.name = name
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "smarthome", *(command or ("run", name))],
            env={**smarthome_env(config), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def log_lines(self) -> list[str]:
        return list(self.lines)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        """The exit code of a process that ends by itself."""
        wait_until(lambda: self.proc.poll() is not None, f"{self.name} to exit", timeout, self.output)
        self._reader.join(timeout)
        return self.proc.returncode

    def stop(self, timeout: float = DEADLINE) -> int:
        """SIGTERM, then the exit code (a service that does not exit in time fails the test)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"{self.name} did not exit within {timeout}s of SIGTERM\n{self.output()}")
        self._reader.join(timeout)
        return code
