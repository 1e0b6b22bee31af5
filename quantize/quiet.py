"""Keep a backend library's console chatter out of our output, and show it when it fails.

GPTQModel and mlx-lm print banners, tables and their own progress bars on stdout, where the
command's results go (and which our progress bars share). While they work, file descriptor 1 and
`sys.stdout` point at a temporary file; if the work fails, its last lines go to stderr, since they
are usually what explains the failure.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

TAIL_LINES = 20


@contextmanager
def library_output() -> Iterator[None]:
    """Capture everything written to stdout, by Python or by native code, while the body runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            with redirect_stdout(sink):
                yield
        except BaseException:
            sink.flush()
            sink.seek(0)
            tail = sink.read().splitlines()[-TAIL_LINES:]
            os.dup2(saved, 1)
            print("\n".join(["library output before the failure:", *tail]), file=sys.stderr)
            raise
        finally:
            sink.flush()
            os.dup2(saved, 1)
            os.close(saved)


def silently_import(module: str) -> None:
    """Import a module whose import prints a banner (GPTQModel's), with the banner captured."""
    with library_output():
        importlib.import_module(module)
