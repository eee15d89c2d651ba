"""Errors that are the user's to fix, told apart from bugs.

A `UserError` is bad input — a config, override, name, path, genotype or checkpoint that does
not fit, or an optional dependency that a command needs and is not installed — and its message
names the problem and the fix. The `modulenet` command prints it as one line and exits with
status 2; every other exception is a bug and keeps its traceback. It is a `ValueError`, so
code that catches bad values catches these too.
"""

import importlib


class UserError(ValueError):
    """Bad input that the user can fix; the message says what is wrong and what to do."""


def require_extra(module: str, extra: str, purpose: str, instead: str = ""):
    """Imports an optional dependency; if it is not installed, a `UserError` naming the extra
    that installs it (and `instead`, another way that needs no extra)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        alternative = f", or {instead}" if instead else ""
        raise UserError(f"{purpose} needs {module}, which is not installed: "
                        f"pip install 'modulenet-jax[{extra}]'{alternative}") from e
