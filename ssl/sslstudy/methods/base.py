"""What the trainer needs from a method."""
from __future__ import annotations

import torch
from torch import nn

from ..augment import ViewSpec


class Method(nn.Module):
    """A backbone plus the method's heads and state (buffers are saved with the checkpoint).

    The trainer calls, per step: `view_specs` to make the batch's views, `loss(views)`, then
    `after_step(step, total_steps)` (EMA targets, queues); per epoch: `before_epoch(...)`.
    """

    def __init__(self, backbone: nn.Module, cfg: dict, views: dict):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.view_specs = [ViewSpec(**views), ViewSpec(**views)]

    def loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        pass

    def before_epoch(self, epoch: int, trainer) -> None:
        pass
