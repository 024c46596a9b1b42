"""Run every service of a config as a local process on 127.0.0.1: the stack without Docker.

Each service is the same `smarthome run NAME` a container runs, with SMARTHOME_LOOPBACK=1 so every
endpoint host becomes 127.0.0.1. Output is prefixed with the service name, like `docker compose up`.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys

from smarthome.core.config import CONFIG_ENV, LOOPBACK_ENV, load_config

STOP_GRACE = 5.0  # seconds each service gets to exit after SIGTERM
OUR_STOP = (-signal.SIGTERM, -signal.SIGINT)  # a child killed by the signal that stopped it: not a failure


def exit_status(code: int) -> int:
    """A child's exit code as a shell reports it: 128 + N for a child killed by signal N."""
    return 128 - code if code < 0 else code


def wait(child: subprocess.Popen[str]) -> int:
    try:
        return child.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def run_all(config_path: str | None) -> int:
    os.environ[LOOPBACK_ENV] = "1"
    config = load_config(config_path)  # fail here, once, on a bad config
    env = {**os.environ, CONFIG_ENV: os.path.abspath(config.path), "PYTHONUNBUFFERED": "1"}
    width = max(map(len, config.services))
    children = {
        name: subprocess.Popen(
            [sys.executable, "-m", "smarthome", "run", name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in config.services
    }
    stopping = False
    ended_alone: str | None = None  # the service that exited by itself, which stopped the others

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with selectors.DefaultSelector() as selector:
        for name, child in children.items():
            selector.register(child.stdout, selectors.EVENT_READ, name)
        while selector.get_map():
            for key, _ in selector.select(timeout=0.5):
                line = key.fileobj.readline()
                if line:
                    print(f"{key.data:<{width}} | {line}", end="", flush=True)
                else:
                    selector.unregister(key.fileobj)
                    if not stopping:  # one service died on its own: stop the rest too
                        ended_alone = key.data
                        stop()
    codes = {name: wait(child) for name, child in children.items()}
    if ended_alone:
        code = exit_status(codes[ended_alone])
        print(f"smarthome: {ended_alone} exited with code {code}; stopped the others", file=sys.stderr)
        return code or 1
    return max((exit_status(code) for code in codes.values() if code not in OUR_STOP), default=0)
