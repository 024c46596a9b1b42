"""Logging for every service and tool: one line per event."""

from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    """One line per event, which `docker compose logs SERVICE` shows."""
    logging.basicConfig(
        level=os.environ.get("SMARTHOME_LOG_LEVEL", "INFO"),
        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
