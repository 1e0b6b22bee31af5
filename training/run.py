"""Run a recipe: parse it, train, report; user mistakes become one line on stderr and exit 1."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, TextIO

from calibration_data import CalibrationError
from training.checkpoint import CheckpointError
from training.config import ConfigError, load_config
from training.data.pipeline import PipelineError
from training.samples import DataError
from training.trainer import TrainingError, train

USER_ERRORS = (
    ConfigError, DataError, CheckpointError, TrainingError, PipelineError, CalibrationError,
)  # fmt: skip


def run(
    recipe: str,
    overrides: Sequence[str],
    resume: bool = False,
    stop_after: int = 0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Train; the result goes to `out`, steps and errors to `err` (default: stdout, stderr).

    The CLI passes the streams that reach the user while it keeps libraries' output off them.
    """
    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = load_config(recipe, list(overrides))
        final = train(
            config, resume=resume, stop_after=stop_after, on_step=partial(print_step, err)
        )
    except USER_ERRORS as error:
        # One write: under torchrun every process shares stderr, and print() writes the text and
        # its newline apart, so two processes' lines could run together.
        err.write(f"error: {error}\n")
        err.flush()
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        print(final or f"stopped; continue with --resume ({config.out}/checkpoints)", file=out)
    return 0


def print_step(stream: TextIO, record: dict[str, Any], steps: int) -> None:
    """One console line per step the log would hold (the JSONL log has every step)."""
    mfu = f" mfu {record['mfu']:.1%}" if record["mfu"] is not None else ""
    print(
        f"step {record['step']}/{steps} loss {record['loss']:.4f} acc {record['accuracy']:.3f} "
        f"lr {record['lr']:.2e} grad {record['grad_norm']:.3f} "
        f"{record['tokens_per_s']:,.0f} tok/s{mfu}",
        file=stream,
        flush=True,
    )
