"""DenseCL (Wang et al. 2021): MoCo v2 plus a dense head whose per-location queries are matched
across the two views by the cosine similarity of backbone features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, Queue, ema_update, momentum_copy, shuffled_forward
from .moco import info_nce, mlp_head


@torch.no_grad()
def match_locations(fq: torch.Tensor, fk: torch.Tensor) -> torch.Tensor:
    """fq, fk: (N, C, H, W) backbone feature maps of two views -> (N, H*W) long: for each query
    location (row-major), the key location of highest cosine similarity in the same image."""
    q = F.normalize(fq.flatten(2).float(), dim=1)
    k = F.normalize(fk.flatten(2).float(), dim=1)
    return torch.einsum("ncs,nct->nst", q, k).argmax(dim=2)


def dense_loss(q_grid: torch.Tensor, k_grid: torch.Tensor, match: torch.Tensor, queue: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """q_grid, k_grid: (N, D, S) normalised dense projections of the two views; match: (N, S) key
    location of each query location; queue: (D, K) pooled dense keys of other images -> scalar:
    `info_nce` over the N*S locations, each positive being the key vector at its match."""
    d = q_grid.shape[1]
    k_pos = torch.gather(k_grid, 2, match.unsqueeze(1).expand(-1, d, -1))
    rows = lambda t: t.transpose(1, 2).reshape(-1, d)  # noqa: E731 - (N, D, S) -> (N*S, D)
    return info_nce(rows(q_grid), rows(k_pos), queue, temperature)


class Heads(nn.Module):
    """DenseCLNeck without BN: global head (pooled map -> Linear-ReLU-Linear) and dense head
    (1x1 conv - ReLU - 1x1 conv on the unpooled map)."""

    def __init__(self, channels: int, hidden: int, dim: int):
        super().__init__()
        self.global_head = mlp_head(channels, hidden, dim)
        self.dense_head = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1))
        for m in self.global_head:  # the official neck re-initialises only its Linear layers (kaiming, fan_in)
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.global_head(fmap.mean(dim=(2, 3))), self.dense_head(fmap)


def encode(backbone: nn.Module, heads: Heads, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> global projection (N, D), dense projection map (N, D, h, w), backbone map (N, C, h, w)."""
    fmap = backbone.forward_map(x)
    return *heads(fmap), fmap


class DenseCL(Method):
    def __init__(self, *args):
        super().__init__(*args)
        c = self.cfg
        self.heads = Heads(self.backbone.out_dim, c["proj_hidden"], c["proj_dim"])
        self.key_backbone, self.key_heads = momentum_copy(self.backbone), momentum_copy(self.heads)
        self.queue = Queue(c["proj_dim"], c["queue"], self.global_batch, "methods.densecl.queue")
        self.queue2 = Queue(c["proj_dim"], c["queue"], self.global_batch, "methods.densecl.queue (dense)")

    def before_step(self, step, total_steps):
        # MoCo's order: the key encoder moves towards the query encoder before the keys are computed.
        ema_update(self.key_backbone, self.backbone, self.cfg["momentum"])
        ema_update(self.key_heads, self.heads, self.cfg["momentum"])

    def optim_groups(self, weight_decay):
        """As the official config (no paramwise options): weight decay on every trained parameter."""
        return [dict(params=[p for p in self.parameters() if p.requires_grad], weight_decay=weight_decay)]

    def forward(self, batch):
        c = self.cfg
        v1, v2 = batch.views[:2]
        q, q_grid, q_map = encode(self.backbone, self.heads, v1)
        with torch.no_grad():
            packed = shuffled_forward(lambda x: _pack(encode(self.key_backbone, self.key_heads, x)), v2,
                                      c["shuffle_groups"], batch.gen)
            k, k_grid, k_map = _unpack(packed, q_grid.shape, q_map.shape)
        with torch.autocast(v1.device.type, enabled=False):  # similarities and losses in float32
            match = match_locations(q_map, k_map)
            q, q_grid = F.normalize(q.float(), dim=1), F.normalize(q_grid.flatten(2).float(), dim=1)
            k, k2 = F.normalize(k.float(), dim=1), F.normalize(k_grid.float().mean(dim=2), dim=1)
            k_grid = F.normalize(k_grid.float(), dim=1)
            loss_global = info_nce(q, k, self.queue.keys.clone(), c["temperature"])
            loss_dense = dense_loss(q_grid, k_grid, match, self.queue2.keys.clone(), c["temperature"])
        self.queue.push(k)
        self.queue2.push(k2)
        lam = c["loss_lambda"]
        loss = (1 - lam) * loss_global + lam * loss_dense
        return loss, dict(loss_global=loss_global.detach(), loss_dense=loss_dense.detach())


def _pack(out: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The key encoder's three outputs as one (N, *) tensor, so shuffle-BN can gather and permute them."""
    return torch.cat([t.flatten(1) for t in out], dim=1)


def _unpack(packed: torch.Tensor, grid_shape, map_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> k (N, D), k_grid (N, D, S), k_map (N, C, h, w)."""
    n, d, h, w = grid_shape
    c = map_shape[1]
    k, k_grid, k_map = packed.split([d, d * h * w, c * h * w], dim=1)
    return k, k_grid.reshape(n, d, h * w), k_map.reshape(n, c, h, w)
