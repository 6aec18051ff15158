"""MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder trained against keys from its
momentum copy, with negatives from a queue of past keys (facebookresearch/moco, builder.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import mlp
from .base import MomentumMethod, float32_without_autocast, unit


@float32_without_autocast
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """q, k: (N, D) L2-normalised queries and their positive keys; queue: (D, K) normalised
    negatives -> scalar: cross-entropy over [q.k, q.queue] / temperature, the positive at index 0."""
    pos = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([pos, q @ queue], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def mlp_head(in_dim: int, hidden: int, out: int, bn: bool = False) -> nn.Sequential:
    """MoCo v2's head: Linear - ReLU - Linear, no batch norm; with bn, SimCLR's projector
    (batch norm after the hidden layer and an affine-free one on the output)."""
    if bn:
        return mlp(in_dim, hidden, out, 2, last_bn=True)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class MoCo(MomentumMethod):
    queues = {"queue": "methods.moco.queue"}

    def build_heads(self):
        self.head = mlp_head(self.backbone.out_dim, self.cfg["proj_hidden"], self.cfg["proj_dim"], self.cfg["proj_bn"])

    def query_and_key(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised queries of view 0 and keys of view 1 (the momentum encoder, shuffle-BN)."""
        return unit(self.online(batch.views[0])), unit(self.momentum_forward(batch.views[1], batch.gen))

    def forward(self, batch):
        q, k = self.query_and_key(batch)
        loss = info_nce(q, k, self.queue.keys.clone(), self.cfg["temperature"])
        self.queue.push(k)
        return loss, {}
