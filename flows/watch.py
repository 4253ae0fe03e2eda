"""How the CLI shows a run while it works: progress bars on a terminal, periodic log lines elsewhere, or quiet.

Tasks publish their progress (`bhashaflow.core.progress`) and log a line every so often (every
`training.log_every` steps, each quarter of an evaluation, every commit of a source). On a terminal the CLI
draws one bar per phase (a source ingesting, a direction training, a model translating) with its rate and ETA,
and drops the log lines the bars repeat; Prefect's other lines print above the bars. Piped, the log lines are
the progress. `--quiet` keeps errors only; the CLI prints the final table itself.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TaskID, TextColumn
from rich.text import Text

from bhashaflow.core.progress import PhaseProgress, format_duration, watching


class _DropProgressLines(logging.Filter):
    """Drops the log lines the progress bars already show: progress, and a task run that completed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "bhashaflow_progress", False):
            return False
        return not (
            record.name == "prefect.task_runs" and record.getMessage().startswith("Finished in state Completed")
        )


class _Rate(ProgressColumn):
    """`12.5 steps/s`, in the phase's own unit."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.finished and task.finished_time:
            speed = task.completed / task.finished_time  # one update at the end: the mean rate
        return Text("" if speed is None else f"{speed:,.1f} {task.fields['unit']}/s", style="progress.data.speed")


class _Eta(ProgressColumn):
    """`ETA 0:01:10` while it runs (unknown without a total), `took 0:00:42` once finished."""

    def render(self, task: Any) -> Text:
        if task.finished:
            return Text(f"took {format_duration(task.finished_time or task.elapsed or 0.0)}", style="progress.elapsed")
        left = task.time_remaining
        return Text(f"ETA {format_duration(left) if left is not None else '-'}", style="progress.remaining")


class _Count(ProgressColumn):
    """`350/500 steps`, or `12,000 rows` while the total is unknown."""

    def render(self, task: Any) -> Text:
        total = "" if task.total is None else f"/{int(task.total):,}"
        return Text(f"{int(task.completed):,}{total} {task.fields['unit']}", style="progress.download")


class ProgressBars:
    """One rich progress bar per phase, fed by the events tasks publish in this process."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            _Count(),
            _Rate(),
            _Eta(),
            TextColumn("{task.fields[note]}"),
            console=console,
            refresh_per_second=4,
        )
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, event: PhaseProgress) -> None:
        task = self.tasks.get(event.key)
        total = event.done if event.finished and event.total is None else event.total
        if task is None:
            description = f"{event.phase:<8} {event.name:<28}"
            self.tasks[event.key] = self.progress.add_task(
                description, total=total, completed=event.done, unit=event.unit, note=event.note
            )
            return
        self.progress.update(task, total=total, completed=event.done, note=event.note)


def _console_handlers() -> list[Any]:
    from prefect.logging.handlers import PrefectConsoleHandler

    return [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]


@contextmanager
def watched(*, quiet: bool = False) -> Iterator[None]:
    """Show the run inside the block: bars when stderr is a terminal, log lines when not, errors only if quiet.

    Args:
        quiet: keep only errors on stderr (the caller still prints its final table).
    """
    handlers = _console_handlers()
    with ExitStack() as stack:
        if quiet:
            errors_only(handlers)
        elif sys.stderr.isatty():
            bars = ProgressBars(Console(stderr=True))
            for handler in handlers:  # Prefect's lines print through the bars' console: above the bars
                stack.callback(setattr, handler, "console", handler.console)
                handler.console = bars.progress.console
                handler.addFilter(drop := _DropProgressLines())
                stack.callback(handler.removeFilter, drop)
            _capture_warnings(stack)
            stack.enter_context(bars.progress)
            stack.enter_context(watching(bars))
        yield


def errors_only(handlers: list[Any] | None = None) -> None:
    """Prefect's console shows errors only, warnings included, for the rest of the process: the temporary
    server logs its shutdown after the flow has returned."""
    for handler in _console_handlers() if handlers is None else handlers:
        handler.setLevel(logging.ERROR)
    logging.captureWarnings(True)


def _capture_warnings(stack: ExitStack) -> None:
    """Python warnings through logging (as Prefect's console shows them), so quiet drops them and bars stay put."""
    logging.captureWarnings(True)
    stack.callback(logging.captureWarnings, False)
