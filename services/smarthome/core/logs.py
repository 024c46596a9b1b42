"""Logging for every service: one line per event on stderr, text or JSON, timestamps in UTC.

SMARTHOME_LOG_LEVEL  debug | info (default) | warning | error | critical, any case
SMARTHOME_LOG_FORMAT text (default): 2026-03-01T07:00:00.123Z INFO    TOASTER started
                     json: {"time": "2026-03-01T07:00:00.123Z", "level": "INFO", "message": "TOASTER started"}

An exception logged with a message (e.g. aiohttp's "Error handling request" for a request without a Host
header) stays on its line as "message: Type: text"; the traceback is added only at level debug (in JSON,
as the "traceback" field).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from smarthome.core.config import ConfigError

LEVEL_ENV = "SMARTHOME_LOG_LEVEL"
FORMAT_ENV = "SMARTHOME_LOG_FORMAT"
LEVELS = ("debug", "info", "warning", "error", "critical")


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
        line = f"{fields['time']} {fields['level']:<7} {fields['message']}"
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[kind](tracebacks=level == "debug"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
