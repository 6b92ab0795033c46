"""Data-parallel training under ``torchrun`` (DistributedDataParallel), and the single-process case.

``torchrun --nproc_per_node N -m hoitool train-teacher ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; we join a process
group (NCCL on CUDA, gloo on CPU). Every rank draws the same seeded batch
order and trains on its share of each global batch (see
:class:`hoitool.train.data.EpochBatchSampler`); only rank 0 evaluates and
writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hoitool.device import resolve_device
from hoitool.errors import UsageError


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shutdown(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def init_distributed(device_name: str | None) -> DistContext:
    """One process, or one rank of a ``torchrun`` job when ``WORLD_SIZE`` > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(0, 1, 0, resolve_device(device_name))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UsageError(f"distributed training supports cpu and cuda devices, not {device}")
    if not dist.is_initialized():
        # rank 0 alone validates and writes outputs while the others wait: allow for long ones
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(hours=2))
    return DistContext(rank, world_size, local_rank, device)
