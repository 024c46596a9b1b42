"""What every benchmark shares: the machine and versions it ran on, load, statistics, and the results files.

Each benchmark writes tests/bench/results/NAME.md (a header with date, machine, versions and command, then
its tables, each row with the 1-minute load average when it was measured) and NAME.png.
docs/benchmarks.md is rebuilt from these files by run_all.py.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    """A free loopback port, for a benchmark's own processes, which start at once (the tests' free_port, in
    support/processes.py, keeps clear of the ephemeral range for services that bind later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, deadline: float = 15.0) -> None:
    """Poll until something accepts on 127.0.0.1:port."""
    until = time.monotonic() + deadline
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > until:
            sys.exit(f"nothing listens on 127.0.0.1:{port} after {deadline:.0f}s")
        time.sleep(0.05)  # ok: the pause between polls of a deadline loop


def load() -> float:
    """The 1-minute load average: recorded beside every figure, since the machine is shared."""
    return os.getloadavg()[0]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _version(command: list[str]) -> str | None:
    if not shutil.which(command[0]):
        return None
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    return (result.stdout or result.stderr).strip().splitlines()[0] if result.returncode == 0 else None


def versions(*extra: str) -> dict[str, str]:
    import zmq

    found = {"python": platform.python_version(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
    for package in ("msgspec", *extra):
        found[package] = metadata.version(package)
    return found


def header(title: str, command: str, extra_versions: dict[str, str | None] | None = None) -> str:
    """The top of a results file: what was run, when, where, with which versions."""
    known = {**versions(), **{k: v for k, v in (extra_versions or {}).items() if v}}
    return (
        f"# {title}\n\n"
        f"- command: `{command}`\n"
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}\n"
        f"- machine: {os.cpu_count()} x {_cpu()}, {platform.system()} {platform.release()}, shared with other work\n"
        f"- load (1-min average) at start: {load():.2f}\n"
        f"- versions: {', '.join(f'{k} {v}' for k, v in known.items())}\n"
    )


def docker_version() -> str | None:
    return _version(["docker", "version", "--format", "{{.Server.Version}}"])


def mosquitto_version() -> str | None:
    path = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(path).exists():
        return None
    result = subprocess.run([path, "-h"], capture_output=True, text=True, timeout=30, check=False)
    return (result.stdout or result.stderr).splitlines()[0].removeprefix("mosquitto version ").strip()


def table(columns: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A Markdown table; `right` holds the indexes of right-aligned (numeric) columns."""
    align = ["---:" if i in (right or set()) else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write(name: str, text: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return path


def bar_chart(name: str, title: str, unit: str, groups: list[str], series: dict[str, list[float | None]]) -> Path:
    """One PNG: for each group on the x axis, one bar per series (None: not measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(8, 1.2 * len(groups) * len(series) / 3), 4.5))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        xs = [x + i * width for x, v in enumerate(values) if v is not None]
        axis.bar(xs, [v for v in values if v is not None], width, label=label)
    axis.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(groups))], groups)
    axis.set_ylabel(unit)
    axis.set_title(title)
    axis.legend(fontsize="small")
    figure.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
