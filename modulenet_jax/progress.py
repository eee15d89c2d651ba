"""Progress of long steps (decoding images, converting checkpoints, cutting modules, search
generations, the final table): bars with the time elapsed and an estimate of the time left.

The library reports through a `Progress`; the base class draws nothing, which is what library
calls get by default. `RichProgress` draws rich's bars on a console (the `modulenet` command
uses it on a terminal); log lines printed through `RichProgress.print` appear above the bars.

    with progress.task("generation 3/8", total=12, unit="networks") as advance:
        for network in networks:
            ...
            advance()
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


class Progress:
    """Reports how far long steps are; this base class reports nothing."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "",
             done: int = 0) -> Iterator[Callable[..., None]]:
        """A step of `total` units (None: unknown) of which `done` are done already (a resumed
        search); yields `advance(n=1)`."""
        yield lambda n=1: None


NO_PROGRESS = Progress()


class RichProgress(Progress):
    """Rich's progress bars on `console` (one line per step that is running, removed when it
    ends): spinner, description, bar, done/total, elapsed and remaining time."""

    def __init__(self, console):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bars, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = console
        self.bars = Bars(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("eta"),
                         TimeRemainingColumn(), console=console, transient=True,
                         speed_estimate_period=24 * 3600)  # the time left from the whole step's pace so far

    def __enter__(self) -> "RichProgress":
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def print(self, message: str) -> None:
        """A log line, above the bars."""
        self.console.print(message)

    @contextlib.contextmanager
    def task(self, description, total, unit="", done=0):
        task_id = self.bars.add_task(description, total=total, completed=done, unit=unit)
        self.bars.advance(task_id, 0)  # the pace is measured from here (rich ignores the first sample's count)
        try:
            yield lambda n=1: self.bars.advance(task_id, n)
        finally:
            self.bars.remove_task(task_id)
