"""Mutation testing: mutmut mutates services/smarthome/core and roles, and the fast tier must notice.

    .venv/bin/python tests/mutation/run.py [--max-children N]      (pip install -e '.[mutation]' first)
    .venv/bin/python tests/mutation/run.py --report                 (the results so far, of a run stopped)
    .venv/bin/python tests/mutation/run.py --retry                  (the survivors not explained, after new tests)

mutmut wants the code in src/ beside tests/, so the run happens in a copy of the project laid out so, in
.mutation/ (ignored by git; mutmut resumes there where it stopped, re-tests what changed, and each start
measures again which test reaches which function and tries the survivors again). The services the
tests start as processes of their own run the mutants too, and what they reach is credited to the test that
started them (sitecustomize.py, hits.py). Prints the score and every survivor; writes
tests/mutation/results.md. Slow (hours on two cores): not part of .ci/run.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORKSPACE = ROOT / ".mutation"
MUTMUT = str(Path(sys.executable).with_name("mutmut"))
MUTATE = ["src/smarthome/core/*", "src/smarthome/roles/*"]
MUTATED = tuple(MUTATE)  # what mutmut owns in its copy, whatever one run's --only picks
NO_TESTS = 33  # mutmut's exit code for a mutant no test reached
# A mutant is noticed when a test fails, or when one spins until mutmut's limit of CPU time (a loop that no
# longer waits): a change that only made a test slower would use no more CPU, so it would not be stopped so.
DETECTED = ("killed", "timeout")
README_SECTION = "## Mutation testing"
INTRO = (
    "Do the tests notice when the code is wrong? `pip install -e '.[mutation]'`, then "
    "`.venv/bin/python tests/mutation/run.py` has [mutmut](https://mutmut.readthedocs.io) change "
    "`services/smarthome/core/` and `roles/` one small edit at a time (a `<` for a `<=`, a string, an argument "
    "dropped) and runs the fast tier against each: a change no test notices survives. The services the tests start "
    "as processes run the changed code too. Hours on two cores, so not part of CI; it resumes where it stopped, "
    "and rewrites this section and `tests/mutation/results.md` (`--report`: what a stopped run found so far; "
    "`--retry`: only the survivors not explained, after new tests)."
)
# Builds a wheel of the checkout's layout (services/), which this copy does not have: not about core or roles.
PACKAGING = "tests/test_cli.py::test_the_wheel_installs_a_working_command_with_dashboard_and_configs"
COPIED = ["tests", "config", "docs", "README.md", "Dockerfile", "requirements.txt", ".ci", "swarm"]
COPIED += ["services/mosquitto"]


def settings() -> str:
    return f"""
[tool.mutmut]
source_paths = ["src/smarthome"]
only_mutate = {MUTATE!r}
pytest_add_cli_args_test_selection = ["tests/", "-m", "not docker", "--deselect", {PACKAGING!r}]
pytest_add_cli_args = ["-p", "hits", "-p", "no:cacheprovider", "--timeout", "120"]
also_copy = {[*COPIED, "docker-compose.yml", "docker-compose.broker.yml", "docker-compose.swarm.yml"]!r}
"""


def workspace() -> None:
    """The project as mutmut wants it, refreshed from the checkout (unchanged files keep their times)."""
    src = WORKSPACE / "src"
    src.mkdir(parents=True, exist_ok=True)
    for root in (src, WORKSPACE / "mutants" / "src"):
        for copy in root.rglob("*.py"):  # a module the checkout no longer has
            if not (ROOT / "services" / copy.relative_to(root)).exists():
                copy.unlink()
    shutil.copytree(ROOT / "services" / "smarthome", src / "smarthome", dirs_exist_ok=True)
    for name in [*COPIED, *(p.name for p in ROOT.glob("docker-compose*.yml"))]:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, WORKSPACE / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, WORKSPACE / name)
    (WORKSPACE / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + settings())
    mutants = WORKSPACE / "mutants" / "src"
    if mutants.is_dir():  # mutmut copies the package once and then only what it mutates: the rest must follow

        def mutated(directory: str, names: list[str]) -> list[str]:  # never overwrite mutmut's own files
            under = Path(directory).relative_to(ROOT / "services")
            return [
                n for n in names if n == "__pycache__" or any(fnmatch.fnmatch(f"src/{under}/{n}", m) for m in MUTATED)
            ]

        shutil.copytree(ROOT / "services" / "smarthome", mutants / "smarthome", dirs_exist_ok=True, ignore=mutated)


def measure_anew(only: list[str] | None = None) -> None:
    """mutmut measures which test reaches which function once, and on a later run only for new tests: a test
    that has since come to reach a new function would never be run against its mutants. So each start measures
    it all again, and the survivors and those no test reached (or `only` these) are tried again with what it
    finds; a killed mutant stays killed."""
    mutants = WORKSPACE / "mutants"
    (mutants / "mutmut-stats.json").unlink(missing_ok=True)
    for meta in mutants.rglob("*.meta"):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})

        def again(name: str, code: int | None) -> bool:  # survived, or reached by no test
            return code in (0, NO_TESTS) and (only is None or name in only)

        if any(again(name, code) for name, code in codes.items()):
            data["exit_code_by_key"] = {name: None if again(name, code) else code for name, code in codes.items()}
            meta.write_text(json.dumps(data, indent=4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Two per core: the tests mostly wait on sockets and the services they start, so one per core leaves it idle
    parser.add_argument("--max-children", type=int, default=2 * (os.cpu_count() or 2))
    parser.add_argument("--only", nargs="*", default=MUTATE, help="globs under src/ to mutate (default: %(default)s)")
    parser.add_argument("--report", action="store_true", help="only write the results so far (a run not finished)")
    parser.add_argument("--retry", action="store_true", help="only the survivors not explained, after new tests")
    options = parser.parse_args()
    MUTATE[:] = options.only
    if options.report:
        report(results())
        return
    again = [name for name in survivors(results()) if name not in explained()] if options.retry else []
    if options.retry and not again:
        sys.exit("no survivors to try again")
    workspace()
    measure_anew(again if options.retry else None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env["MUTMUT_HITS_DIR"] = str(WORKSPACE / "mutants" / "hits")
    env.setdefault("SMARTHOME_TEST_DEADLINE", "6")  # a wait a mutant broke fails in 6 s, not 15
    # A mutated module holds every mutant of it (megabytes): compiled once, not by each service process started
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    run = subprocess.run([MUTMUT, "run", "--max-children", str(options.max_children), *again], cwd=WORKSPACE, env=env)
    if run.returncode:
        sys.exit(f"mutmut run failed ({run.returncode}); nothing written")
    report(results())


def results() -> str:
    """mutmut's status of every mutant, one per line."""
    listed = subprocess.run([MUTMUT, "results", "--all", "true"], cwd=WORKSPACE, capture_output=True, text=True)
    return listed.stdout


def explained() -> dict[str, str]:
    """Why each survivor judged equivalent changes nothing observable: tests/mutation/why.toml."""
    return tomllib.loads((HERE / "why.toml").read_text())["why"]


def statuses_in(listing: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(\S+): (.+)$", listing, re.M))


def survivors(listing: str) -> list[str]:
    """The mutants no test noticed (survived, or reached by none), of those checked so far."""
    return sorted(name for name, status in statuses_in(listing).items() if status not in (*DETECTED, "not checked"))


def report(listing: str) -> None:
    """tests/mutation/results.md, and the README's section from it: the score, and each survivor with why it
    changes nothing observable (tests/mutation/why.toml; one not explained there says so). Of a run not
    finished, the score of the mutants checked so far, and how many are not yet."""
    statuses = statuses_in(listing)
    unchecked = sum(status == "not checked" for status in statuses.values())
    checked = len(statuses) - unchecked
    killed = sum(status in DETECTED for status in statuses.values())
    left = survivors(listing)
    why = explained()
    score = killed / checked if checked else 0.0
    rows = [f"| `{name}` | {statuses[name]} | {why.get(name, '**not explained**')} |" for name in left]
    progress = f" ({unchecked} of {len(statuses)} not checked yet: a run goes on where it stopped)" if unchecked else ""
    figures = [
        f"Last run {datetime.datetime.now(datetime.UTC):%Y-%m-%d}: {checked} mutants of "
        f"{', '.join('services/' + m.removeprefix('src/') for m in MUTATE)} checked{progress}, {killed} killed "
        f"by the fast tier (a test failed, or spun until mutmut's CPU-time limit): **{score:.1%}**. The "
        "survivors, and why each changes nothing a user or a peer could observe:",
        "",
        "| survivor | status | why |",
        "|---|---|---|",
        *rows,
    ]
    (HERE / "results.md").write_text("# Mutation testing\n\n" + "\n".join(figures) + "\n")
    readme = (ROOT / "README.md").read_text()
    head, found, rest = readme.partition(README_SECTION)
    if found:  # the score; the survivors, one line each, are in results.md
        tail = rest[rest.find("\n## ") :] if "\n## " in rest else "\n"
        unexplained = sum(name not in why for name in left)
        summary = figures[0].partition(" The survivors")[0] + (
            f" {len(left)} survivors: [tests/mutation/results.md](tests/mutation/results.md) says why each changes"
            f" nothing a user or a peer could observe ({unexplained} not explained yet)."
        )
        (ROOT / "README.md").write_text(head + README_SECTION + "\n\n" + INTRO + "\n\n" + summary + "\n" + tail)
    print("\n".join(figures))


if __name__ == "__main__":
    main()
