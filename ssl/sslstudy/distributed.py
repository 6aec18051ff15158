"""Data-parallel helpers: one process per GPU (torchrun or submitit set RANK/WORLD_SIZE), gloo on
CPU. With a single process every helper is the identity, so methods call them unconditionally."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def init_from_env() -> None:
    """Join the process group described by the environment (no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x over ranks along dim 0, in rank order (no gradient): e.g. keys for a queue."""
    if world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """As gather, but gradients flow back to every rank's slice (global-batch losses)."""
    if world() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x.contiguous()))


def local_slice(n_global: int) -> slice:
    """This rank's rows of a global batch of n_global (n_global divisible by the world size)."""
    n = n_global // world()
    return slice(rank() * n, (rank() + 1) * n)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if world() > 1:
        dist.all_reduce(x)
    return x


def barrier() -> None:
    """Wait until every rank gets here."""
    if world() > 1:
        dist.barrier()
