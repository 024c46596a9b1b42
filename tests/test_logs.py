"""The log lines a loop holds back until its messages are out: same lines, same order, errors at once."""

import io
import logging
import time
from collections.abc import Iterator

import pytest
from smarthome.core.logs import TextFormatter, held_lines


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level


def stream_logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter(tracebacks=False))
    root = logging.getLogger()
    root.handlers, root.level = [handler], logging.INFO
    return logging.getLogger("smarthome.test"), out


def test_held_lines_are_written_in_order_at_each_flush_and_at_the_end() -> None:
    log, out = stream_logger()
    before = logging.getLogger().handlers
    with held_lines() as lines:
        log.info("first")
        log.info("second")
        assert out.getvalue() == ""  # held: the message they tell of is still being sent
        assert lines.held_for() > 0
        lines.flush()
        assert lines.held_for() == 0
        assert [line.split()[-1] for line in out.getvalue().splitlines()] == ["first", "second"]
        log.info("third")
    assert out.getvalue().splitlines()[-1].endswith("third")  # written when the loop ends, however it ends
    assert logging.getLogger().handlers == before


def test_errors_are_written_at_once_after_what_was_held() -> None:
    log, out = stream_logger()
    with held_lines():
        log.info("routine")
        log.error("broken")
        assert [line.split()[-1] for line in out.getvalue().splitlines()] == ["routine", "broken"]


def test_a_held_line_carries_the_time_of_its_call_and_exceptions_are_not_held() -> None:
    log, out = stream_logger()
    created: list[float] = []
    logging.getLogger().handlers[0].addFilter(lambda record: created.append(record.created) or True)
    with held_lines() as lines:
        before = time.time()
        log.info("routine")
        after = time.time()
        while time.time() == after:  # the flush comes strictly later than the call
            pass
        lines.flush()
        assert before <= created[0] <= after
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
        assert out.getvalue().splitlines()[-1].endswith("failed: ValueError: bad")
