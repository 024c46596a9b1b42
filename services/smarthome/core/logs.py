"""Logging for every service: one line per event on stderr, text or JSON, timestamps in UTC.

SMARTHOME_LOG_LEVEL  debug | info (default) | warning | error | critical, any case
SMARTHOME_LOG_FORMAT text (default): 2026-03-01T07:00:00.123Z INFO    TOASTER started
                     json: {"time": "2026-03-01T07:00:00.123Z", "level": "INFO", "message": "TOASTER started"}

An exception logged with a message (e.g. aiohttp's "Error handling request" for a request without a Host
header) stays on its line as "message: Type: text"; the traceback is added only at level debug (in JSON,
as the "traceback" field). Control characters a peer smuggles into a topic, sender or body are escaped, so
one event is always one line and cannot forge another.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from smarthome.core.config import ConfigError

LEVEL_ENV = "SMARTHOME_LOG_LEVEL"
FORMAT_ENV = "SMARTHOME_LOG_FORMAT"
LEVELS = ("debug", "info", "warning", "error", "critical")
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}  # newlines, escape sequences, ...
WARNINGS_PER_SECOND = 10  # warnings about single bad messages beyond this are counted, not printed


class _Formatter(logging.Formatter):
    """The fields of a line: time (ISO 8601, UTC, ms), level, message with any exception in one line."""

    def __init__(self, tracebacks: bool) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message += f": {type(error).__name__}: {' '.join(str(error).split())}"
        fields = {"time": f"{seconds}.{int(record.msecs):03d}Z", "level": record.levelname, "message": message}
        if record.exc_info and self.tracebacks:
            fields["traceback"] = self.formatException(record.exc_info)
        return fields


class TextFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        line = f"{fields['time']} {fields['level']:<7} {fields['message']}".translate(_CONTROL)
        return f"{line}\n{fields['traceback']}" if "traceback" in fields else line


class JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record))


FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


def setup_logging() -> None:
    """Configure the root logger from the environment; a bad value is a one-line ConfigError."""
    level = os.environ.get(LEVEL_ENV, "info").lower()
    if level not in LEVELS:
        raise ConfigError(LEVEL_ENV, "", f"unknown level '{level}' (one of: {', '.join(LEVELS)})")
    kind = os.environ.get(FORMAT_ENV, "text").lower()
    if kind not in FORMATTERS:
        raise ConfigError(FORMAT_ENV, "", f"unknown format '{kind}' (one of: {', '.join(FORMATTERS)})")
    # What our lines never show, not collected per call (the logging HOWTO's "Optimization"): a line is a few
    # microseconds cheaper, and the handlers of a message log on its path.
    logging._srcfile = None  # type: ignore[attr-defined]  # no caller lookup (file, line, function)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[kind](tracebacks=level == "debug"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class HeldLines(logging.Handler):
    """Holds log records until `flush()`, then hands them to `targets` in order. The poller loop flushes when it
    is idle, so the lines about a message are written after the messages it caused have gone on: log I/O (and,
    under Docker, the log driver it wakes) is never on a message's path. Errors are written at once."""

    CAPACITY = 1000  # records held at most; more are written at once

    def __init__(self, targets: list[logging.Handler]) -> None:
        super().__init__()
        self.targets = targets
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) >= self.CAPACITY or record.levelno >= logging.ERROR:
            self.flush()

    def held_for(self) -> float:
        """Seconds since the oldest line held was logged (0 with none)."""
        return time.time() - self.records[0].created if self.records else 0.0

    def flush(self) -> None:
        records, self.records = self.records, []
        for record in records:
            for target in self.targets:
                if record.levelno >= target.level:
                    target.handle(record)


@contextmanager
def held_lines() -> Iterator[HeldLines]:
    """The root logger's lines held until the yielded handler's `flush()` (and written at the end, whatever
    ends it), then its own handlers back."""
    root = logging.getLogger()
    targets = root.handlers[:]
    held = HeldLines(targets)
    root.handlers = [held]
    try:
        yield held
    finally:
        root.handlers = targets
        held.flush()


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
