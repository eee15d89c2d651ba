"""Errors that are the user's to fix, told apart from bugs.

A `UserError` is bad input — a config, override, name, path, genotype or checkpoint that does
not fit — and its message names the problem and the fix. The `modulenet` command prints it as
one line and exits with status 2; every other exception is a bug and keeps its traceback. It
is a `ValueError`, so code that catches bad values catches these too.
"""


class UserError(ValueError):
    """Bad input that the user can fix; the message says what is wrong and what to do."""
