"""Training checkpoints: written whole or not at all, checked when read, enough to resume exactly.

`<out>/checkpoints/step-000050/` holds the model and optimizer state in torch's distributed
checkpoint format (each process writes its own shards, so DDP, FSDP and one process share one
layout), every process's RNG states, and `trainer.json`, written last by the main process: the
step, the configuration, the starting model's identity and the sha256 of every other file.
A directory is first written as `.step-000050.partial` and renamed when complete; a checkpoint
whose files do not match their hashes is reported as corrupt, by name.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.distributed import World

STATE_FILE = "trainer.json"


class CheckpointError(ValueError):
    """A checkpoint is corrupt, or was made by another recipe or model than this run's."""


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


def latest(out: Path) -> Path | None:
    """The newest complete checkpoint (one with trainer.json), or None."""
    found = sorted((out / "checkpoints").glob(f"step-*/{STATE_FILE}"))
    return found[-1].parent if found else None


def save(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    world: World,
    out: Path,
    step: int,
    meta: dict[str, Any],
    keep: int,
) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = checkpoint_dir(out, step)
    staging = final.with_name(f".{final.name}.partial")
    if world.main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    world.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process without a group is a layout DCP supports
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=staging)
    torch.save(rng_state(), staging / f"rng-rank{world.rank}.pt")
    world.barrier()
    if world.main:
        files = {p.name: sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        state = {"step": step, **meta, "files": files}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", "utf-8")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        for old in sorted((out / "checkpoints").glob("step-*"))[:-keep]:
            shutil.rmtree(old)
    world.barrier()
    return final


def read_state(directory: Path) -> dict[str, Any]:
    """trainer.json of a checkpoint after checking every file it lists against its hash."""
    state_file = directory / STATE_FILE
    try:
        state = json.loads(state_file.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"checkpoint {directory} is corrupt: {state_file.name} ({err})"
        ) from err
    for name, digest in state["files"].items():
        path = directory / name
        if not path.is_file() or sha256(path) != digest:
            raise CheckpointError(
                f"checkpoint {directory} is corrupt: {name} is missing or does not match its hash"
            )
    return state


def load(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, world: World, directory: Path
) -> None:
    """Model, optimizer and this process's RNG states from a checked checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.load(state, checkpoint_id=directory)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    restore_rng(torch.load(directory / f"rng-rank{world.rank}.pt", weights_only=True))


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, lists and numbers only, so that torch.load can read it with
    weights_only=True (which refuses to unpickle anything else, e.g. numpy arrays)."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(words), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
