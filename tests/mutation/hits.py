"""A pytest plugin for mutation runs (tests/mutation/run.py loads it): the functions a test's own service
processes reached count as reached by that test, so mutmut runs it against their mutants."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mutmut.state import state

HITS = Path(os.environ.get("MUTMUT_HITS_DIR", "mutmut-hits"))


def _stats() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST") == "stats"


def _file(nodeid: str) -> Path:
    return HITS / (nodeid.replace("/", "_").replace(":", "_")[-200:] + ".hits")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _stats():
        HITS.mkdir(parents=True, exist_ok=True)
        os.environ["MUTMUT_HITS_FILE"] = str(_file(item.nodeid).resolve())


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    """After teardown: every process the test started has stopped and written what it reached."""
    if not _stats():
        return
    os.environ.pop("MUTMUT_HITS_FILE", None)
    hits = _file(nodeid)
    if hits.exists():
        for function in set(hits.read_text().split()):
            state().tests_by_mangled_function_name[function].add(nodeid.removeprefix("mutants/"))
        hits.unlink()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Against a mutant, the cheapest tests first: the run stops at the first failure (-x), and most mutants
    are killed by a quick unit test. Each file's tests stay together (module fixtures are set up once), the files
    ordered by what their chosen tests took when measured, and the tests within by the same."""
    if _stats() or not os.environ.get("MUTANT_UNDER_TEST"):
        return
    took = state().duration_by_test

    def cost(item: pytest.Item) -> float:
        return took.get(item.nodeid.removeprefix("mutants/"), 1.0)

    per_file: dict[str, float] = {}
    for item in items:
        per_file[item.path.name] = per_file.get(item.path.name, 0.0) + cost(item)
    items.sort(key=lambda item: (per_file[item.path.name], cost(item)))
