"""Progress: silent by default in the library, rich's bars with the time left on a terminal."""

import io

from rich.console import Console

from modulenet_jax.progress import NO_PROGRESS, RichProgress


def test_the_library_default_reports_nothing():
    with NO_PROGRESS.task("anything", 3, "networks") as advance:
        advance()
        advance(2)


def test_rich_bars_show_done_total_and_time_left_and_go_when_done():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with RichProgress(console) as progress:
        progress.print("a log line")
        with progress.task("generation 2/8", 12, "networks") as advance:
            advance(5)
            progress.bars.refresh()
            shown = out.getvalue()
        assert not progress.bars.tasks  # a finished step's bar is removed
    assert "a log line" in shown and "generation 2/8" in shown and "5/12" in shown and "networks" in shown
    assert "eta" in shown
