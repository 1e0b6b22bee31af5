"""Keep backend libraries' console chatter off the user's terminal, and keep it when they fail.

GPTQModel, torchao, transformers, mlx-lm and llama.cpp print banners, tables, warnings, log lines
and their own progress bars, from Python and from native code, on stdout (where a command's results
go) and stderr (where our messages and progress bars go). While a library works, file descriptors
1 and 2 point at a temporary file, and `sys.stdout`/`sys.stderr` at the process's own streams
(which write to those descriptors, and stay valid for any handler a library keeps afterwards). Our
own output meanwhile reaches the user through `terminal()`. If the work fails, the captured lines
are written to a log file and the exception carries its path as a note (`LOG_NOTE`), which the
CLI's one-line error names.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

from quantize.source import cache_dir

LOG_NOTE = "library output: "
# While output is captured: fd → the stream that reaches the user (stdout is 1, stderr 2).
_terminals: list[dict[int, TextIO]] = []


def terminal(fd: int) -> TextIO:
    """Where our own output for `fd` (1: results, 2: messages and progress) goes right now."""
    if _terminals:
        return _terminals[-1][fd]
    return sys.stdout if fd == 1 else sys.stderr


def log_dir() -> Path:
    """Where the output of a library that failed is kept."""
    return cache_dir() / "logs"


@contextmanager
def library_output() -> Iterator[None]:
    """Capture everything written to stdout and stderr, by Python or native code, in the body."""
    if _terminals:  # inside another capture, which already holds everything
        yield
        return
    streams = {1: sys.stdout, 2: sys.stderr}
    _flush()
    _terminals.append({fd: _reaching_user(stream, fd) for fd, stream in streams.items()})
    saved = {fd: os.dup(fd) for fd in streams}
    with tempfile.TemporaryFile() as sink:
        for fd in streams:
            os.dup2(sink.fileno(), fd)
        try:
            sys.stdout = sys.__stdout__ or sys.stdout
            sys.stderr = sys.__stderr__ or sys.stderr
            with _line_buffered(sys.stdout):  # the log keeps prints and native lines in order
                yield
        except Exception as err:
            _restore(streams, saved)
            _keep_log(sink, err)
            raise
        finally:
            _restore(streams, saved)
            _terminals.pop()


def silently_import(module: str) -> None:
    """Import a module whose import prints a banner (GPTQModel's), with the banner captured."""
    with library_output():
        importlib.import_module(module)


def _reaching_user(stream: TextIO, fd: int) -> TextIO:
    """`stream`, or a new stream on a copy of `fd` when `stream` writes to `fd` (which is about
    to point at the capture file). A stream on another fd or none (a test's StringIO) is kept."""
    try:
        writes_to_fd = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        writes_to_fd = False
    if not writes_to_fd:
        return stream
    encoding = getattr(stream, "encoding", None) or "utf-8"
    # Not closed on exit: a progress bar's refresh thread may be writing to it; it closes when
    # the last reference goes.
    return open(os.dup(fd), "w", encoding=encoding, errors="replace", buffering=1)


@contextmanager
def _line_buffered(stream: TextIO) -> Iterator[None]:
    line_buffering = getattr(stream, "line_buffering", True)
    if not line_buffering:
        stream.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if not line_buffering:
            stream.reconfigure(line_buffering=False)  # type: ignore[attr-defined]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()


def _restore(streams: dict[int, TextIO], saved: dict[int, int]) -> None:
    """Put the descriptors and streams back as they were (nothing left to do the second time)."""
    if not saved:
        return
    _flush()  # what the library wrote through Python goes to the capture, not the terminal
    sys.stdout, sys.stderr = streams[1], streams[2]
    for fd, copy in saved.items():
        os.dup2(copy, fd)
        os.close(copy)
    saved.clear()


def _keep_log(sink: BinaryIO, err: BaseException) -> None:
    """Write what the library printed before `err` to a log file and note its path on `err`."""
    sink.seek(0)
    captured = sink.read()
    if not captured.strip():
        return
    try:
        log_dir().mkdir(parents=True, exist_ok=True)
        path = log_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_bytes(captured)
    except OSError:
        return  # nowhere to keep it; the error itself still reaches the user
    err.add_note(f"{LOG_NOTE}{path}")
