"""Run the `bielik-quant` command line in-process, as a user would call it, capturing its output."""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from unittest import mock


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str) -> Result:
    """`bielik-quant ARGS` through the same `main()` the console script runs."""
    from bielik_quant.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with (
        redirect_stdout(out),
        redirect_stderr(err),
        mock.patch.object(sys, "argv", ["bielik-quant", *args]),
    ):
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code
    return Result(code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`python -m bielik_quant ARGS` in a fresh process (for what needs a real process)."""
    return subprocess.run(
        [sys.executable, "-m", "bielik_quant", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
