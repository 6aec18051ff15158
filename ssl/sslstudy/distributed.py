"""Data-parallel helpers: one process per GPU (torchrun or submitit set RANK/WORLD_SIZE), gloo on
CPU. With a single process every helper is the identity, so methods call them unconditionally."""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def init_from_env(cuda: bool | None = None) -> None:
    """Join the process group described by the environment (no-op for a single process): NCCL when
    the ranks train on GPUs (cuda; default: whenever torch sees CUDA), else gloo."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(_leave)


def _leave() -> None:
    """Leave the process group before the interpreter exits: a group still alive at exit can abort the
    process from its communication threads ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """The device the process group's collectives run on (NCCL: this rank's GPU; gloo: the CPU)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


def all_reduce_sum_async(x: torch.Tensor):
    """Start summing x over ranks in place; returns the work to wait() on (None for a single process)."""
    return dist.all_reduce(x, async_op=True) if world() > 1 else None


def barrier() -> None:
    """Wait until every rank gets here."""
    if world() > 1:
        dist.barrier()
