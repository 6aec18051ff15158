"""What the training loops read from the device, and when: the host syncs kept out of the step.

On a GPU the host queues kernels ahead of the device; reading a value the device computes (``.item()``,
``float(t)``, ``bool(t)``, ``if torch.isfinite(loss)``) makes the host wait until every kernel queued
before it has run, and the GPU then idles while the host queues the next ones. So the step keeps its
numbers on the device: the logged sums (`accumulate`) and the loss check (`LossWatch`) are read once
every so many steps. Every read of device values in the loops (training, fine-tuning, the torch
k-means, kNN and linear heads) goes through `read_on_host`, which the fake-CUDA test replaces (fake
tensors hold no values). Host tensors go to the device through `to_device`, which does not wait
either. docs/performance.md lists the syncs per step that remain and why.
"""

from __future__ import annotations

import numpy as np
import torch

from . import distributed

CHECK_EVERY = 50  # steps between two reads of LossWatch (and before anything is saved)


def read_on_host(t: torch.Tensor) -> np.ndarray:
    """t's values on the host: a sync on a GPU (waits for every kernel queued before it)."""
    return t.detach().cpu().numpy()


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device`` without the host waiting: on CUDA it is pinned first and copied
    asynchronously (a copy from pageable memory waits until the GPU's queue has run); elsewhere ``.to``."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def accumulate(total, value):
    """total + value in float64, where value is (a tensor stays on its device: no host read). The same
    number as summing Python floats: float32/bf16 values widen to float64 exactly either way."""
    if isinstance(value, torch.Tensor):
        return value.detach().double() + total
    return total + float(value)


def host_sums(sums: dict) -> dict[str, float]:
    """`accumulate`'s sums as Python floats, read in one go."""
    tensors = {k: v for k, v in sums.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        return {k: float(v) for k, v in sums.items()}
    values = read_on_host(torch.stack([v.to(next(iter(tensors.values())).device) for v in tensors.values()]))
    read = dict(zip(tensors, values.tolist()))
    return {k: float(read[k]) if k in read else float(v) for k, v in sums.items()}


class LossWatch:
    """Whether the loss stayed finite, without a host read per step, decided by all ranks together.

    `add` keeps, on the loss's device, the first step whose loss was not finite and that loss. `check`
    (every CHECK_EVERY steps, see `due`, and before anything is saved) gathers every rank's in one
    collective and reads them once, so every rank gets the same answer and all raise together: a rank
    raising alone would leave the others waiting in DDP's gradient all-reduce until NCCL's watchdog
    fires, and the log would show a timeout instead of the loss. Steps after the first non-finite one
    still run (their weights are not finite) but nothing of them is saved."""

    def __init__(self, every: int = CHECK_EVERY):
        self.every = every
        self.first = None  # (2,) float64 on the device: [first non-finite step or -1, its loss]

    def add(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().double()
        if self.first is None:
            self.first = torch.full((2,), -1.0, dtype=torch.float64, device=loss.device)
        fresh = ~torch.isfinite(loss) & (self.first[0] < 0)
        # the step as a Python scalar is a kernel argument: no copy to the device
        self.first = torch.where(fresh, torch.stack([torch.full_like(loss, float(step)), loss]), self.first)

    def due(self, step: int) -> bool:
        return (step + 1) % self.every == 0

    def check(self, device) -> tuple[int, float, list[int]] | None:
        """(the first non-finite step of any rank, its loss, the ranks whose loss was not finite at that
        step), or None if every loss so far was finite. Every rank must call it at the same step."""
        mine = self.first if self.first is not None else torch.full((2,), -1.0, dtype=torch.float64, device=device)
        rows = read_on_host(distributed.gather(mine[None])).tolist()
        bad = [(int(step), value, rank) for rank, (step, value) in enumerate(rows) if step >= 0]
        if not bad:
            return None
        step, value, _ = min(bad)
        return step, value, [rank for s, _, rank in bad if s == step]
