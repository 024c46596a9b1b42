"""Loaded by every Python process of a mutation run (tests/mutation/run.py puts this folder on PYTHONPATH).

While mutmut maps which tests reach which function ("stats"), a service started by a test as a process of its
own records its hits in that process, where mutmut never sees them. Such a process appends each function it
reaches to the file $MUTMUT_HITS_FILE names, which tests/mutation/hits.py adds to the test that started it.
"""

import os

if os.environ.get("MUTANT_UNDER_TEST") == "stats" and os.environ.get("MUTMUT_HITS_FILE"):
    from mutmut.mutation import trampoline

    _seen: set[str] = set()

    def _tell(name: str, caller: str | None = None) -> None:
        """Instead of mutmut's own record, which this process could not hand back (and whose config it would look
        for in its working directory, wherever the test started it)."""
        if name not in _seen:
            _seen.add(name)
            with open(os.environ["MUTMUT_HITS_FILE"], "a") as hits:
                hits.write(name + "\n")

    trampoline.record_trampoline_hit = _tell
