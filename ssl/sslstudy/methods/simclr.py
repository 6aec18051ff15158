"""SimCLR (Chen et al. 2020): NT-Xent over the 2N views of a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed as dist
from ..models import mlp
from .base import Method, float32_without_autocast


@float32_without_autocast
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """z1, z2: (N, D) projections of two views of the same N images -> scalar.

    Each of the 2N views is an anchor whose positive is the other view of its image and whose
    negatives are the other 2N-2 views; cross-entropy over cosine similarity / temperature,
    averaged over the 2N anchors. (google-research/simclr sums the two directions: twice this.)
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


class SimCLR(Method):
    def __init__(self, *args):
        super().__init__(*args)
        c = self.cfg
        self.projector = mlp(self.backbone.out_dim, c["proj_hidden"], c["proj_dim"], c["proj_layers"], last_bn=True)

    def forward(self, batch):
        z1, z2 = (dist.gather_with_grad(self.projector(self.backbone(v))) for v in batch.views[:2])
        return nt_xent(z1, z2, self.cfg["temperature"]), {}
