"""Where the CLI talks to a person: messages and progress on stderr, results on stdout."""

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True)
# Results piped to a file keep whole table rows instead of wrapping at 80 columns.
output = Console(width=None if sys.stdout.isatty() else 200)


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
