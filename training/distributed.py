"""Process groups and model wrapping: torch's own DDP and FSDP2, chosen by the recipe.

One process (`python -m training`, `bielik-quant train`) and N processes under `torchrun` run the
same code: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK and we join its group, gloo on a CPU and NCCL
on CUDA. Nothing here splits work by hand; data parallelism is DDP's or FSDP's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

PARALLEL = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes (float64 on the CPU, so gloo and NCCL agree)."""
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def join() -> World:
    """This process's place: alone, or in the group torchrun started."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, device)


def leave(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, parallel: str, world: World) -> torch.nn.Module:
    """The model as the recipe's parallelism runs it (unchanged for one process or "none")."""
    if world.size == 1:
        return model
    if parallel == "none":
        raise ValueError(f"{world.size} processes need parallel: ddp or fsdp in the recipe")
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = None if world.device.type == "cpu" else [world.device.index]
        return DistributedDataParallel(model, device_ids=ids)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Each decoder block is its own FSDP unit (gathered just before use), then the root.
        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")


def unwrap(model: torch.nn.Module) -> Any:
    """The transformers model inside a DDP wrapper (FSDP2 shards in place, so it is the model)."""
    return getattr(model, "module", model)
