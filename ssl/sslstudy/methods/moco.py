"""MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder trained against keys from its
momentum copy, with negatives from a queue of past keys (facebookresearch/moco, builder.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, Queue, ema_update, momentum_copy, shuffled_forward


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """q, k: (N, D) L2-normalised queries and their positive keys; queue: (D, K) normalised
    negatives -> scalar: cross-entropy over [q.k, q.queue] / temperature, the positive at index 0."""
    pos = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([pos, q @ queue], dim=1) / temperature  # autocast runs cross_entropy in float32
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def mlp_head(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """MoCo v2's head: Linear - ReLU - Linear, no batch norm."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class MoCo(Method):
    def __init__(self, *args):
        super().__init__(*args)
        c = self.cfg
        self.head = mlp_head(self.backbone.out_dim, c["proj_hidden"], c["proj_dim"])
        self.key_backbone, self.key_head = momentum_copy(self.backbone), momentum_copy(self.head)
        self.queue = Queue(c["proj_dim"], c["queue"], self.global_batch, "methods.moco.queue")

    def before_step(self, step, total_steps):
        # the official order: update the key encoder, then compute this step's keys
        ema_update(self.key_backbone, self.backbone, self.cfg["momentum"])
        ema_update(self.key_head, self.head, self.cfg["momentum"])

    def forward(self, batch):
        q = F.normalize(self.head(self.backbone(batch.views[0])), dim=1)
        with torch.no_grad():
            k = shuffled_forward(lambda x: self.key_head(self.key_backbone(x)), batch.views[1],
                                 self.cfg["shuffle_groups"], batch.gen)
            k = F.normalize(k, dim=1)
        loss = info_nce(q, k, self.queue.keys.clone(), self.cfg["temperature"])
        self.queue.push(k)
        return loss, {}
