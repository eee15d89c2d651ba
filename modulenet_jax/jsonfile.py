"""JSON files the tool writes and reads back (run folders, knowledge bases, converted models,
exports): one that is corrupt or holds something else is a `UserError` naming the file and the
way out, not a traceback from deep inside; settings saved with a folder that the current ones
differ from are named the same way everywhere (`difference`)."""

from __future__ import annotations

import json
from pathlib import Path

from modulenet_jax.errors import UserError


def read_json(path, what: str, fix: str, kind: type = dict):
    """The `kind` (a dict, a list) that `path` holds, `what` naming it in an error that ends in `fix`."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(value, kind):
        raise UserError(f"{path} does not hold a {what} (a JSON {kind.__name__}): {fix}")
    return value


def difference(there: dict, here: dict, ignore=()) -> str | None:
    """The first key (of either) whose saved value differs from the current one, as
    `key: saved there, current here` (and how many more differ); None where none does."""
    changed = [k for k in {**there, **here} if k not in ignore and there.get(k) != here.get(k)]
    if not changed:
        return None
    key, more = changed[0], f"; and {len(changed) - 1} more" if len(changed) > 1 else ""
    return f"{key}: {there.get(key)!r} there, {here.get(key)!r} here{more}"
