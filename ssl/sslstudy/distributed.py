"""Data-parallel helpers: one process per GPU (torchrun or submitit set RANK/WORLD_SIZE), gloo on
CPU. With a single process every helper is the identity, so methods call them unconditionally."""

from __future__ import annotations

import atexit
import logging
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

log = logging.getLogger("sslstudy.distributed")


def init_from_env(cuda: bool | None = None) -> None:
    """Join the process group described by the environment (no-op for a single process): NCCL when
    the ranks train on GPUs (cuda; default: whenever torch sees CUDA), else gloo. With NCCL, a second
    group on gloo carries the host-side flags (see host_group)."""
    global _host_group
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_gpu())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        if dist.get_backend() == "nccl":
            _host_group = dist.new_group(backend="gloo")  # every rank creates it, in the same order
        atexit.register(_leave)


def local_gpu() -> int:
    """This process's GPU among those it sees: LOCAL_RANK when every task of the node sees all its GPUs,
    and the task's own GPU where the cluster binds GPUs to tasks (SLURM's --gpus-per-task or --gpu-bind
    show each task only its own, numbered from 0): LOCAL_RANK modulo the GPUs this process sees."""
    return int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())


_host_group = None  # the gloo group of an NCCL job (init_from_env), for flags that live on the host


def host_group():
    """The process group for small host-side tensors (a stop flag): gloo, so summing them never waits
    for the GPU's queue (NCCL reduces only GPU tensors, whose value the host reads only once the
    kernels before it ran). None: the default group, itself gloo (or a single process)."""
    return _host_group


def _leave() -> None:
    """Leave the process group before the interpreter exits: a group still alive at exit can abort the
    process from its communication threads ("terminate called without an active exception")."""
    global _host_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _host_group = None


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


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """x summed over ranks (of ``group``; None: all), in place."""
    if world() > 1:
        dist.all_reduce(x, group=group)
    return x


def all_reduce_sum_async(x: torch.Tensor, group=None):
    """Start summing x over ranks (of ``group``; None: all) in place; returns the work to wait() on (None
    for a single process)."""
    return dist.all_reduce(x, group=group, async_op=True) if world() > 1 else None


def barrier() -> None:
    """Wait until every rank gets here."""
    if world() > 1:
        dist.barrier()


def sync_batchnorm(model: torch.nn.Module, wanted: bool, device: torch.device, what: str) -> torch.nn.Module:
    """model with every batch norm computing its statistics over the global batch of all ranks
    (torch.nn.SyncBatchNorm; the same parameters and state_dict keys) when ``wanted`` (a method's
    sync_batchnorm) and several ranks train on GPUs. torch's SyncBatchNorm has no CPU version: CPU
    ranks keep their own statistics, and the log says so. ``what``: the run, for the log."""
    if not wanted or world() == 1:
        return model
    if device.type != "cuda":
        log.info(
            "%s: sync_batchnorm asked, but torch's SyncBatchNorm runs on GPUs only: each of the %d CPU ranks "
            "keeps its own batch-norm statistics",
            what,
            world(),
        )
        return model
    log.info("%s: batch norm synchronised across the %d ranks (SyncBatchNorm)", what, world())
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
