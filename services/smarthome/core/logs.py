"""Logging for every service and tool: one line per event, whatever a peer puts in it."""

from __future__ import annotations

import logging
import os
import time

# Every control character a hostile topic, sender or body could smuggle into a line (newlines, escapes).
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}
WARNINGS_PER_SECOND = 10  # per-message warnings beyond this are counted, not printed


class OneLineFormatter(logging.Formatter):
    """Escapes control characters, so one event is always one line and cannot forge another."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).translate(_CONTROL)


def setup_logging() -> None:
    """One line per event, which `docker compose logs SERVICE` shows."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        OneLineFormatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    )
    logging.basicConfig(level=os.environ.get("SMARTHOME_LOG_LEVEL", "INFO"), handlers=[handler])


class LimitedWarnings:
    """Warnings about single bad messages, at most WARNINGS_PER_SECOND a second: a flood of bad input must
    not flood the log. What is held back is counted and reported with the next line that gets through."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.second = 0
        self.printed = 0
        self.held_back = 0

    def warn(self, message: str, *args: object) -> None:
        now = int(time.monotonic())
        if now != self.second:
            self.second, self.printed = now, 0
        if self.printed >= WARNINGS_PER_SECOND:
            self.held_back += 1
            return
        self.printed += 1
        if self.held_back:
            message += f" (and {self.held_back} more like it held back)"
            self.held_back = 0
        self.log.warning(message, *args)
