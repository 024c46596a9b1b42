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
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from smarthome.core.config import SettingError

LEVEL_ENV = "SMARTHOME_LOG_LEVEL"
FORMAT_ENV = "SMARTHOME_LOG_FORMAT"
LEVELS = ("debug", "info", "warning", "error", "critical")
# C0 and C1 controls (newlines, escape sequences, NEL) and Unicode's own line breaks: a peer cannot end a line.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), *range(127, 160)]} | {c: f"\\u{c:04x}" for c in (0x2028, 0x2029)}
LINES_PER_SECOND = 10  # lines one peer's traffic may cause; beyond this they are counted, not printed
PEERS_COUNTED = 256  # peers whose lines are counted apart; the least recently heard is dropped past this


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
    """Configure the root logger from the environment; a bad value is a one-line SettingError."""
    level = os.environ.get(LEVEL_ENV, "info").lower()
    if level not in LEVELS:
        raise SettingError(LEVEL_ENV, "", f"unknown level '{level}' (one of: {', '.join(LEVELS)})")
    kind = os.environ.get(FORMAT_ENV, "text").lower()
    if kind not in FORMATTERS:
        raise SettingError(FORMAT_ENV, "", f"unknown format '{kind}' (one of: {', '.join(FORMATTERS)})")
    # What our lines never show, not collected per call (the logging HOWTO's "Optimization"): a line is a few
    # microseconds cheaper, and the handlers of a message log on its path.
    logging._srcfile = None  # type: ignore[attr-defined]  # no caller lookup (file, line, function)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[kind](tracebacks=level == "debug"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class HeldLines:
    """Log calls held until `flush()`, then logged in order, each with its own time. The poller loop flushes
    when it is idle, so the lines about a message are made and written after the messages it caused have gone
    on: making a record, formatting, writing (and, under Docker, the log driver it wakes) are never on a
    message's path. A held call costs a tuple, a fraction of a line made and written, most of all right after a
    wakeup, when all code runs cold (tests/bench/hop_cost.py measures both). Errors, and calls with exception
    info, are logged at once, after what was held."""

    CAPACITY = 1000  # calls held at most; at this many, they are logged at once

    def __init__(self) -> None:
        self.calls: list[tuple[HoldingLogger, int, object, tuple[object, ...], int]] = []

    def held_for(self) -> float:
        """Seconds since the oldest call held (0 with none)."""
        return (time.time_ns() - self.calls[0][4]) / 1e9 if self.calls else 0.0

    def flush(self) -> None:
        calls, self.calls = self.calls, []
        for logger, level, msg, args, when in calls:
            logger.write(level, msg, args, when)


class HoldingLogger(logging.Logger):
    """A Logger whose calls `held_lines` can hold: its record is made only when the line is written."""

    holder: ClassVar[HeldLines | None] = None

    def _log(  # type: ignore[override]  # the signature of logging.Logger._log, which every call goes through
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: Any = None,
        extra: Any = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        held = HoldingLogger.holder
        if held is None or level >= logging.ERROR or exc_info or extra or stack_info:
            if held:
                held.flush()
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel)
            return
        held.calls.append((self, level, msg, args, time.time_ns()))
        if len(held.calls) >= held.CAPACITY:
            held.flush()

    def write(self, level: int, msg: object, args: Any, when_ns: int) -> None:
        """Log a held call now, stamped with the time it was made."""
        record = self.makeRecord(self.name, level, "(unknown file)", 0, msg, args, None)
        record.created = when_ns / 1e9
        record.msecs = float(when_ns % 1_000_000_000 // 1_000_000)
        self.handle(record)


def _use_holding_loggers() -> None:
    """Our own loggers ('smarthome' and below, made at import) HoldingLoggers: the same, but while held. Other
    libraries' loggers are left as they are: their lines are written at once."""
    for name, logger in logging.Logger.manager.loggerDict.items():
        if type(logger) is logging.Logger and (name == "smarthome" or name.startswith("smarthome.")):
            logger.__class__ = HoldingLogger


@contextmanager
def held_lines() -> Iterator[HeldLines]:
    """Log calls held until the yielded holder's `flush()` (and logged at the end, whatever ends it)."""
    _use_holding_loggers()
    held = HeldLines()
    HoldingLogger.holder = held
    try:
        yield held
    finally:
        HoldingLogger.holder = None
        held.flush()


class LimitedLines:
    """Lines about what peers send, at most `per_second` a second per peer: a flood of bad input or of
    subscriptions must not flood the log, nor hide what others do. What is held back is counted and told with
    that peer's next line that gets through. `peer`: the key it authenticated with, or whatever tells it apart."""

    def __init__(
        self,
        log: logging.Logger,
        level: int = logging.WARNING,
        per_second: int = LINES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = log
        self.level = level
        self.per_second = per_second
        self.clock = clock
        self.peers: OrderedDict[object, list[int]] = OrderedDict()  # peer -> [second, printed, held back]

    def log(self, message: str, *args: object, peer: object = None) -> None:
        now = int(self.clock())
        count = self.peers.pop(peer, None) or [now, 0, 0]
        self.peers[peer] = count  # the most recently heard last
        if len(self.peers) > PEERS_COUNTED:
            self.peers.popitem(last=False)
        if count[0] != now:
            count[0], count[1] = now, 0
        if count[1] >= self.per_second:
            count[2] += 1
            return
        count[1] += 1
        if count[2]:
            message += f" (and {count[2]} more like it held back)"
            count[2] = 0
        self.logger.log(self.level, message, *args)


peer_warnings = LimitedLines(logging.getLogger("smarthome"))  # about what peers send: an allowance per peer


def escape(text: object, limit: int = 200) -> str:
    """`text` fit for one log line: control characters escaped, cut at `limit` characters."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text)[: limit + 1])
    return line if len(line) <= limit else line[:limit] + "…"
