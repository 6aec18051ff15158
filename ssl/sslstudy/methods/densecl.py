"""DenseCL (Wang et al. 2021): MoCo v2 plus a dense head whose per-location queries are matched
across the two views by the cosine similarity of backbone features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MomentumMethod, float32_without_autocast, unit
from .moco import info_nce, mlp_head


@torch.no_grad()
@float32_without_autocast
def match_locations(fq: torch.Tensor, fk: torch.Tensor) -> torch.Tensor:
    """fq, fk: (N, C, H, W) backbone feature maps of two views -> (N, H*W) long: for each query
    location (row-major), the key location of highest cosine similarity in the same image."""
    q = F.normalize(fq.flatten(2), dim=1)
    k = F.normalize(fk.flatten(2), dim=1)
    return torch.einsum("ncs,nct->nst", q, k).argmax(dim=2)


@float32_without_autocast
def dense_loss(
    q_grid: torch.Tensor, k_grid: torch.Tensor, match: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """q_grid, k_grid: (N, D, S) normalised dense projections of the two views; match: (N, S) key
    location of each query location; queue: (D, K) pooled dense keys of other images -> scalar:
    `info_nce` over the N*S locations, each positive being the key vector at its match."""
    d = q_grid.shape[1]
    k_pos = torch.gather(k_grid, 2, match.unsqueeze(1).expand(-1, d, -1))
    rows = lambda t: t.transpose(1, 2).reshape(-1, d)  # noqa: E731 - (N, D, S) -> (N*S, D)
    return info_nce(rows(q_grid), rows(k_pos), queue, temperature)


class Heads(nn.Module):
    """DenseCLNeck without BN: global head (pooled map -> Linear-ReLU-Linear) and dense head
    (1x1 conv - ReLU - 1x1 conv on the unpooled map); with bn, each head has MoCo's proj_bn batch
    norm (after the hidden layer; affine-free on the output)."""

    def __init__(self, channels: int, hidden: int, dim: int, bn: bool = False):
        super().__init__()
        self.global_head = mlp_head(channels, hidden, dim, bn)
        if bn:
            self.dense_head = nn.Sequential(
                nn.Conv2d(channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, dim, 1, bias=False),
                nn.BatchNorm2d(dim, affine=False),
            )
        else:
            self.dense_head = nn.Sequential(
                nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1)
            )
        for m in self.global_head:  # the official neck re-initialises only its Linear layers (kaiming, fan_in)
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.global_head(fmap.mean(dim=(2, 3))), self.dense_head(fmap)


class DenseCL(MomentumMethod):
    copied = ("heads",)
    queues = {"queue": "methods.densecl.queue", "queue2": "methods.densecl.queue (dense)"}

    def build_heads(self):
        self.heads = Heads(self.backbone.out_dim, self.cfg["proj_hidden"], self.cfg["proj_dim"], self.cfg["proj_bn"])

    def encode(self, x, backbone, heads):
        """-> global projection (N, D), dense projection map (N, D, h, w), backbone map (N, C, h, w)."""
        fmap = backbone.forward_map(x)
        return *heads(fmap), fmap

    def optim_groups(self, weight_decay):
        """As the official config (no paramwise options): weight decay on every trained parameter."""
        return [dict(params=[p for p in self.parameters() if p.requires_grad], weight_decay=weight_decay)]

    def forward(self, batch):
        c = self.cfg
        q, q_grid, q_map = self.online(batch.views[0])
        k, k_grid, k_map = self.momentum_forward(batch.views[1], batch.gen)
        match = match_locations(q_map, k_map)
        k_grid = k_grid.flatten(2).float()
        q, q_grid, k, k2 = unit(q), unit(q_grid.flatten(2)), unit(k), unit(k_grid.mean(dim=2))  # k2: pooled dense keys
        loss_global = info_nce(q, k, self.queue.keys.clone(), c["temperature"])
        loss_dense = dense_loss(q_grid, unit(k_grid), match, self.queue2.keys.clone(), c["temperature"])
        self.queue.push(k)
        self.queue2.push(k2)
        lam = c["loss_lambda"]
        loss = (1 - lam) * loss_global + lam * loss_dense
        return loss, dict(loss_global=loss_global.detach(), loss_dense=loss_dense.detach())
