"""Where the CLI talks to a person: messages and progress on stderr, results on stdout."""

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from quantize.quiet import terminal


class _Terminal:
    """stdout or stderr as they reach the user: while `quantize.quiet.library_output` holds a
    library's output, our progress bars, messages and results still get through."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __getattr__(self, name: str) -> Any:
        return getattr(terminal(self.fd), name)


console = Console(file=_Terminal(2))
# Results piped to a file keep whole table rows instead of wrapping at 80 columns.
output = Console(file=_Terminal(1), width=None if sys.stdout.isatty() else 200)


def progress() -> Progress:
    """The progress bar every long step uses."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


class Bars:
    """Turns `(description, done, total)` progress calls into rich progress bars, one per stage."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, description: str, done: int, total: int) -> None:
        if description not in self.tasks:
            self.tasks[description] = self.bar.add_task(description, total=total)
        self.bar.update(self.tasks[description], completed=done, total=total)

    def clear(self) -> None:
        """Remove the bars drawn so far (a finished stage's)."""
        for task in self.tasks.values():
            self.bar.remove_task(task)
        self.tasks.clear()
