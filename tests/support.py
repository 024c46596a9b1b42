"""Test helpers: services as real local processes, configs on free loopback ports, polling with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import smarthome as code_package
import yaml
import zmq
from smarthome.core.config import load_config
from smarthome.core.identity import TOOLS
from smarthome.core.keys import KeyRing, key_names, keys_dir
from smarthome.web.guard import TOKEN_COOKIE

if TYPE_CHECKING:
    import docker

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "config" / "smarthome.yml"
BROKER_CONFIG = ROOT / "config" / "smarthome.broker.yml"
BROKER_FILES = ("docker-compose.yml", "docker-compose.broker.yml")  # the broker wiring's compose files
# Debian's Chromium, driven by Playwright (never `playwright install`), as the browser tests launch it.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--host-resolver-rules=MAP evil.example 127.0.0.1",  # DNS rebinding, without a DNS server
]
WIRINGS = {"direct": ("docker-compose.yml",), "broker": BROKER_FILES}  # compose files of each wiring
# Seconds any awaited condition may take before a test fails; the mutation run lowers it, so that a mutant that
# breaks a wait is told in seconds (each condition takes well under one when the code is right).
DEADLINE = float(os.environ.get("SMARTHOME_TEST_DEADLINE", "15"))
COMPOSE_TIMEOUT = 300  # seconds for one compose command (a first build installs dependencies)
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
HEALTHCHECK_INTERVAL = "SMARTHOME_HEALTHCHECK_INTERVAL"
# The Docker tier waits on health (`up --wait`, restarts, swarm updates): its stacks are checked every second,
# not every 30 s as compose ships it (there, each check's cost in the engine matters more than a quick first one).
os.environ.setdefault(HEALTHCHECK_INTERVAL, "1s")


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


def with_key(sock: zmq.Socket, config: Path, name: str = TOOLS, server: str | None = None) -> zmq.Socket:
    """A test's own socket speaking CurveZMQ with the key of `name` (made if missing), pinned to `server`'s key
    (or, with none, a server itself). Call before bind or connect."""
    loaded = load_config(config)
    ring = KeyRing(keys_dir(loaded))
    ring.ensure(key_names(loaded))
    sock.curve_publickey, sock.curve_secretkey = ring.pair(name)
    if server:
        sock.curve_serverkey = ring.public(server)
    else:
        sock.curve_server = True
    return sock


def dashboard_token(config: Path, web: str = "web") -> str:
    """The dashboard's access token for `config`: made beside its keys when the web first starts."""
    return KeyRing(keys_dir(load_config(config))).token(web).decode()


def as_page(base: str, config: Path) -> dict[str, str]:
    """The headers the dashboard's own page at `base` (scheme://host:port) sends with /ws: its Origin, and the
    token as the cookie that /?token= set."""
    return {"Origin": base, "Cookie": f"{TOKEN_COOKIE}={dashboard_token(config)}"}


def listener(context: zmq.Context, config: Path, service: str, *topics: bytes) -> zmq.Socket:
    """A test's own SUB (the host tools' key) on `service`'s publisher, subscribed to `topics`."""
    sub = with_key(context.socket(zmq.SUB), config, server=service)
    for topic in topics:
        sub.subscribe(topic)
    sub.connect(endpoint(config, service))
    return sub


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


class Stack:
    """One compose project of ours, under its own name, driven by the `docker compose` CLI."""

    def __init__(self, engine: docker.DockerClient, *files: str, kind: str = "test") -> None:
        self.engine = engine
        self.project = f"smarthome-{kind}-{uuid.uuid4().hex[:8]}"
        self.files = [arg for f in files or ("docker-compose.yml",) for arg in ("-f", str(ROOT / f))]

    def compose(self, *args: str) -> str:
        command = ["docker", "compose", *self.files, "-p", self.project, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT, cwd=ROOT)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def containers(self, service: str | None = None) -> list:
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self.engine.containers.list(all=True, filters={"label": labels})

    def recreate(self, service: str, *options: str) -> None:
        """A new container for `service` (a new hostname, so a new instance), its dependencies left alone."""
        self.compose("up", "--detach", *options, "--force-recreate", "--no-deps", service)

    def scale(self, service: str, instances: int, *options: str) -> None:
        """Start or stop containers of `service` until `instances` run; the others are left as they are."""
        self.compose("up", "--detach", *options, "--no-recreate", "--scale", f"{service}={instances}", service)

    def network(self, name: str) -> Any:
        """One of the project's compose networks."""
        return self.engine.networks.get(f"{self.project}_{name}")

    def logs(self, service: str) -> ServiceLogs:
        return ServiceLogs(self, service)

    def all_logs(self) -> str:
        return "\n".join(
            f"{c.labels['com.docker.compose.service']} | {line}"
            for c in self.containers()
            for line in c.logs().decode().splitlines()
        )

    def stop_and_check_exit_codes(self) -> None:
        """`docker compose stop` (SIGTERM), then every container must have exited 0 by itself."""
        self.compose("stop")
        for container in self.containers():
            container.reload()
            state = container.attrs["State"]
            name = container.labels["com.docker.compose.service"]
            assert state["ExitCode"] == 0, f"{name} exited {state['ExitCode']} (137 = SIGKILLed)\n{self.all_logs()}"
            assert not state["OOMKilled"]
            if name != "keys":  # the one-shot that made the keys ended long before
                assert self.logs(name).log_lines()[-1].endswith("stopped")


class ServiceLogs(LogReader):
    """The log lines of every container of one compose service."""

    deadline = 60.0  # containers start slower than local processes

    def __init__(self, stack: Stack, service: str) -> None:
        self.stack = stack
        self.name = service

    def log_lines(self) -> list[str]:
        return [line for c in self.stack.containers(self.name) for line in c.logs().decode().splitlines()]

    def output(self) -> str:
        return self.stack.all_logs()


def mirror_view(stack: Stack) -> dict[str, str]:
    """The mirror's latest summary as {label: state}, e.g. {"coffee": "ready", "toast@1a2b3c4d5e6f": "idle"}."""
    line = stack.logs("smart-mirror").last("MIRROR coffee")
    return dict(part.split("=") for part in line.split()[1:])


def mirror_shows(stack: Stack, state: str, toasters: int) -> bool:
    """Whether the mirror shows everything in `state`, with `toasters` toaster instances (0: one, unlabelled)."""
    view = mirror_view(stack)
    return sum(label.startswith("toast@") for label in view) == toasters and set(view.values()) == {state}


# --- faults on the compose stack (the fault suite and the fault benchmark) ---


def kill_service(container: Any) -> None:
    """SIGKILL the service's own process (not tini): a crash, which the restart policy answers."""
    top = container.top()
    pid, cmd = top["Titles"].index("PID"), top["Titles"].index("CMD")
    [target] = [int(p[pid]) for p in top["Processes"] if p[cmd].startswith("python")]
    os.kill(target, signal.SIGKILL)


def restarted_and_healthy(container: Any, restarts: int) -> bool:
    """Whether `container` was restarted since it had `restarts` restarts, and is healthy again."""
    container.reload()
    state = container.attrs["State"]
    return container.attrs["RestartCount"] > restarts and state.get("Health", {}).get("Status") == "healthy"


@contextlib.contextmanager
def paused(container: Any) -> Iterator[None]:
    """`docker pause`: frozen, its TCP connections stay open; only missing heartbeats tell."""
    container.pause()
    try:
        yield
    finally:
        container.unpause()


@contextlib.contextmanager
def partitioned(stack: Stack, container: Any) -> Iterator[None]:
    """Cut `container` off the compose network (no FIN reaches anyone), then plug it back under its service name."""
    network = stack.network("home")
    network.disconnect(container)
    try:
        yield
    finally:
        network.connect(container, aliases=[container.labels["com.docker.compose.service"]])


# --- faults made in a container's network namespace, from the host: the container keeps cap_drop: ALL ---

RESOLVER = "127.0.0.11"  # Docker's resolver, in each container's own namespace
# Queries dropped where they arrive, silently (dropped on the way out, the sender would be told at once): a
# lookup waits as it does on a resolver that is cut off, 5 s x 2 attempts (Docker has already moved port 53).
DNS_OUTAGE = [f"PREROUTING -i lo -d {RESOLVER} -p {protocol} -j DROP" for protocol in ("udp", "tcp")]
CUT_FROM = ["OUTPUT ! -o lo -j DROP"]  # nothing the service sends leaves; what is sent to it arrives
CUT_TO = ["PREROUTING ! -i lo -j DROP"]  # nothing sent to the service arrives; what it sends leaves


NETEM = ROOT / "tests" / "netem.py"
NETEM_QUEUE = 7  # the NFQUEUE number tests/netem.py reads, in the container's own namespace


def in_namespace(container: Any, *command: str) -> None:
    """Run `command` on the host inside `container`'s network namespace."""
    container.reload()
    pid = str(container.attrs["State"]["Pid"])
    subprocess.run(["nsenter", "--target", pid, "--net", *command], check=True, capture_output=True, timeout=30)


def lossy(percent: float) -> list[str]:
    """Rules that drop `percent` % of the packets each way, at random (not the container's own loopback)."""
    probability = f"{percent / 100:.4f}"
    return [
        f"{chain} ! {side} lo -m statistic --mode random --probability {probability} -j DROP"
        for chain, side in (("PREROUTING", "-i"), ("OUTPUT", "-o"))
    ]


@contextlib.contextmanager
def firewalled(container: Any, rules: list[str], table: str = "raw") -> Iterator[None]:
    """iptables `rules` in `container`'s network namespace, for as long as the block runs (the raw table by
    default: it comes before Docker's own address translation of its resolver)."""
    for rule in rules:
        in_namespace(container, "iptables", "-t", table, "-I", *rule.split())
    try:
        yield
    finally:
        for rule in rules:
            in_namespace(container, "iptables", "-t", table, "-D", *rule.split())


@contextlib.contextmanager
def delayed(container: Any, delay: float, jitter: float = 0.0, reorder: float = 0.0) -> Iterator[None]:
    """What `container` sends held `delay` ± `jitter` seconds (`reorder`: that share sent at once, ahead), as
    netem on its interface would: tests/netem.py, in its network namespace, on the packets an NFQUEUE rule
    hands it (this kernel has no netem)."""
    container.reload()
    pid = str(container.attrs["State"]["Pid"])
    shape = ["--delay", str(delay), "--jitter", str(jitter), "--reorder", str(reorder)]
    holder = subprocess.Popen(
        ["nsenter", "--target", pid, "--net", sys.executable, str(NETEM), "--queue", str(NETEM_QUEUE), *shape],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "holding", "tests/netem.py did not start"
        with firewalled(container, [f"POSTROUTING ! -o lo -j NFQUEUE --queue-num {NETEM_QUEUE}"], "mangle"):
            yield
    finally:
        holder.terminate()  # lets every packet it holds go
        holder.wait(30)


def stamp(line: str) -> float | None:
    """The UTC time a service logged `line` at (`2026-03-01T07:00:00.123Z LEVEL message`), or None."""
    try:
        when = datetime.datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return when.replace(tzinfo=datetime.UTC).timestamp()
