"""Turn msgspec validation errors into plain words, shared by the config and envelope checks."""

import msgspec

_WORDING = {"Object missing required field": "missing key", "Object contains unknown field": "unknown key"}


def explain(exc: msgspec.ValidationError) -> tuple[str, str]:
    """(problem, key path): "Expected `int`, got `str` - at `$.a.b`" -> ("expected 'int', got 'str'", "a.b")."""
    problem, _, where = str(exc).partition(" - at `")
    if where.startswith("key` in `"):  # a mapping's key is wrong, not its value
        problem, where = f"a key: {problem[0].lower()}{problem[1:]}", where.removeprefix("key` in `")
    for theirs, ours in _WORDING.items():
        problem = problem.replace(theirs, ours)
    problem = problem.replace("`", "'")
    return problem[0].lower() + problem[1:], where.removesuffix("`").removeprefix("$").removeprefix(".")
