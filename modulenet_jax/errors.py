"""Errors that are the user's to fix, told apart from bugs.

A `UserError` is bad input — a config, override, name, path, genotype or checkpoint that does
not fit, or an optional dependency that a command needs and is not installed — and its message
names the problem and the fix. The `modulenet` command prints it as one line and exits with
status 2; every other exception is a bug and keeps its traceback. It is a `ValueError`, so
code that catches bad values catches these too.
"""

import importlib
import sys

EXIT_USAGE = 2
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class UserError(ValueError):
    """Bad input that the user can fix; the message says what is wrong and what to do."""


def one_line(text) -> str:
    """`text` on one line, even where a wrapped library message had several."""
    return " ".join(str(text).split())


def report(prog: str, error) -> int:
    """Prints bad input as the one line `<prog>: error: <message>` on stderr; the exit status."""
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    return EXIT_USAGE


def run_script(parser, run, argv=None):
    """`run(parser.parse_args(argv))` with the `modulenet` command's handling of bad input, for the
    scripts run as `python -m` (benchmarks): a `UserError` or a missing or wrong path prints one line,
    `<prog>: error: <message>`, and exits with status 2; `--debug` (added here) keeps the traceback."""
    parser.add_argument("--debug", action="store_true", help="on bad input, the traceback instead of one line")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (UserError, *PATH_ERRORS) as e:
        if args.debug:
            raise
        raise SystemExit(report(parser.prog, e)) from None


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
