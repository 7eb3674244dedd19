"""Data-parallel training under `torchrun`: one process per device, gradients averaged by DDP.

torchrun tells each process its place through the environment (WORLD_SIZE, RANK, LOCAL_RANK and
the rendezvous address); without it everything here degrades to a single process and no
collective is ever called, so a plain `rlr train` behaves exactly as before.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from rlr.engine.build import resolve_device
from rlr.errors import ConfigError


def launched_world_size() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when alone); readable before any setup."""
    return int(os.environ.get("RANK", "0")) if launched_world_size() > 1 else 0


def is_main_process() -> bool:
    """Only rank 0 writes files and prints progress."""
    return launched_rank() == 0


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among `world_size` processes and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """The first process on its machine (fills the machine's feature cache)."""
        return self.local_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar tensor over all processes (the value itself when alone)."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def replica_difference(self, model: nn.Module) -> float:
        """The largest difference between any process's parameter fingerprint and rank 0's (0.0: identical replicas).

        A fingerprint per tensor (float64 sum, sum of squares and position-weighted sum) is gathered instead of
        the weights themselves, so the check costs a few numbers per tensor whatever the model's size.
        """
        if not self.distributed:
            return 0.0
        rows = []
        for parameter in model.parameters():
            flat = parameter.detach().to(torch.float64).flatten()
            weights = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)
            rows.append(torch.stack([flat.sum(), flat.square().sum(), (flat * weights).sum()]))
        fingerprint = torch.stack(rows)
        gathered = [torch.empty_like(fingerprint) for _ in range(self.world_size)]
        dist.all_gather(gathered, fingerprint)
        return max((other - gathered[0]).abs().max().item() for other in gathered)


def _device_for(name: str, local_rank: int, distributed: bool) -> torch.device:
    """The configured device; under torchrun a CUDA run takes the GPU numbered by LOCAL_RANK."""
    device = resolve_device(name)
    if not distributed or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(f"train.device={name}: under torchrun every process takes cuda:LOCAL_RANK; use auto or cuda")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
    return torch.device("cuda", local_rank)


@contextmanager
def session(device_name: str) -> Iterator[Context]:
    """This process's Context; under torchrun the process group lives exactly as long as the `with` block.

    The backend is NCCL for GPUs and Gloo for CPUs. A process group set up by the caller is used as it
    is and left to the caller to close.
    """
    world_size = launched_world_size()
    distributed = world_size > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if distributed else 0
    device = _device_for(device_name, local_rank, distributed)
    context = Context(launched_rank(), local_rank, world_size, device)
    if not distributed or dist.is_initialized():
        yield context
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=context.rank, world_size=world_size, device_id=device)
    else:
        dist.init_process_group("gloo", rank=context.rank, world_size=world_size)
    try:
        yield context
    finally:
        dist.destroy_process_group()
