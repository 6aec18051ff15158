"""BYOL (Grill et al. 2020): an online network predicts a slowly moving target network's
projection of the other view (google-deepmind/deepmind-research byol/)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import mlp
from .base import MomentumMethod, float32_without_autocast


@float32_without_autocast
def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """p, z: (N, D) -> (N,): ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)."""
    return 2 - 2 * F.cosine_similarity(p, z, dim=1)


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """p_i: online predictions of view i; z_i: target projections of view i (gradient stopped) ->
    scalar: batch mean of the symmetrised sum, as the official repr_loss."""
    return (regression_loss(p1, z2.detach()) + regression_loss(p2, z1.detach())).mean()


class BYOL(MomentumMethod):
    """The target (target_backbone, target_projector) follows the online networks after each
    optimiser step, its momentum rising from cfg["momentum"] to 1 by a cosine."""

    copied, prefix, schedule, ema_at = ("projector",), "target", "cosine", "after_step"

    def build_heads(self):
        c = self.cfg
        self.projector = mlp(self.backbone.out_dim, c["proj_hidden"], c["proj_dim"], 2)
        self.predictor = mlp(c["proj_dim"], c["pred_hidden"], c["proj_dim"], 2)

    def forward(self, batch):
        v1, v2 = batch.views[:2]
        p1, p2 = (self.predictor(self.online(v)) for v in (v1, v2))
        z1, z2 = (self.momentum_forward(v) for v in (v1, v2))
        return byol_loss(p1, p2, z1, z2), {}
