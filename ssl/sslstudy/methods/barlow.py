"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' standardised
embeddings is pushed to the identity (facebookresearch/barlowtwins, main.py)."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist
from .base import Method, float32_without_autocast


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """BatchNorm1d(affine=False) in training mode: per-dimension zero mean, unit (biased) variance."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


@float32_without_autocast
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """z1, z2: (N, D) embeddings of the two views (the global batch) -> scalar:
    sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 with C = std(z1)^T std(z2) / N (D x D)."""
    c = standardize(z1).T @ standardize(z2) / z1.shape[0]
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambd * off


def projector(in_dim: int, dims: list[int]) -> nn.Sequential:
    """Linear-BN-ReLU blocks, then a last Linear; no biases (the official 8192-8192-8192)."""
    mods: list[nn.Module] = []
    for d in dims[:-1]:
        mods += [nn.Linear(in_dim, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True)]
        in_dim = d
    return nn.Sequential(*mods, nn.Linear(in_dim, dims[-1], bias=False))


class BarlowTwins(Method):
    def __init__(self, *args):
        super().__init__(*args)
        self.projector = projector(self.backbone.out_dim, self.cfg["proj_dims"])

    def forward(self, batch):
        z1, z2 = (dist.gather_with_grad(self.projector(self.backbone(v))) for v in batch.views[:2])
        return barlow_twins_loss(z1, z2, self.cfg["lambd"]), {}
