"""SwAV (Caron et al. 2020): swapped prediction of Sinkhorn-Knopp cluster codes over multi-crop views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist
from ..errors import UserError
from ..models import mlp
from .base import Method, Queue, float32_without_autocast


@torch.no_grad()
@float32_without_autocast
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """scores: (n, K) prototype scores of this rank's n samples -> (n, K) codes, each row summing to 1.

    Sinkhorn-Knopp on Q = exp(scores / epsilon)^T (K x B, B = the global number of samples):
    scale Q to total mass 1, then `iterations` times make every prototype's row sum 1/K and every
    sample's column sum 1/B; finally columns are rescaled to sum to 1 (facebookresearch/swav
    `distributed_sinkhorn`). Row sums are all-reduced over ranks, so the codes equal those of one
    process holding the whole batch. Runs in float32 (base.float32_without_autocast); the global maximum is
    subtracted before exp (a constant factor the first normalisation removes) so small epsilons
    cannot overflow.
    """
    s = scores / epsilon
    top = dist.gather(s.max().reshape(1)).max()
    q = torch.exp(s - top).T  # K x n
    n_global = q.shape[1] * dist.world()
    k = q.shape[0]
    q /= dist.all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= dist.all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n_global
    q *= n_global
    return q.T


def swav_loss(
    scores: list[torch.Tensor], codes: list[torch.Tensor], assign: list[int], temperature: float
) -> torch.Tensor:
    """scores: one (n, K) tensor of prototype scores per crop (large crops first); codes: one (n, K)
    code tensor per crop in `assign` (rows summing to 1) -> scalar.

    Swapped prediction: the codes of crop a are predicted from every other crop v (small ones too)
    by cross-entropy against softmax(scores_v / temperature); averaged over the other crops, then
    over the crops in `assign` (main_swav.py `train`).
    """
    loss = 0.0
    for a, q in zip(assign, codes):
        others = [v for v in range(len(scores)) if v != a]
        loss = loss + sum(
            -(q * F.log_softmax(scores[v].float() / temperature, dim=1)).sum(dim=1).mean() for v in others
        ) / len(others)
    return loss / len(assign)


class SwAV(Method):
    """Projection head -> L2-normalised embedding -> prototypes (a bias-free linear layer whose rows
    are re-normalised before every step, frozen for the first epochs). Codes come from the crops in
    `crops_for_assign` (the two large ones); an optional queue of past embeddings, started at
    `queue_start_epoch` and used once full, enlarges the set Sinkhorn balances over."""

    ASSIGN = (0, 1)  # crops_for_assign: the two large crops

    def __init__(self, *args):
        super().__init__(*args)
        c = self.cfg
        if len(self.view_specs) < 2:
            raise UserError(
                f"swav needs at least 2 views (the two large crops), got {len(self.view_specs)}; "
                "list them under methods.swav.views in params"
            )
        self.projector = mlp(self.backbone.out_dim, c["proj_hidden"], c["proj_dim"], 2)
        self.prototypes = nn.Linear(c["proj_dim"], c["prototypes"], bias=False)
        self.freeze_steps = c["freeze_prototypes_epochs"] * (
            self.n_train // self.global_batch
        )  # steps/epoch: drop_last
        self.queues = nn.ModuleList()
        if c["queue_length"]:
            self.queues.extend(
                Queue(c["proj_dim"], c["queue_length"], self.global_batch, "methods.swav.queue_length")
                for _ in self.ASSIGN
            )
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # samples pushed so far
        self.filled = 0  # queue_filled as a Python int (read from the buffer only on loading): no host sync
        self.register_load_state_dict_post_hook(SwAV._read_filled)

    @staticmethod
    def _read_filled(swav: "SwAV", incompatible) -> None:
        swav.filled = int(swav.queue_filled)

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """All crops -> (n_crops * n, dim) L2-normalised embeddings, in crop order. As the official
        model, the backbone sees crops of one resolution at a time and the head sees all at once."""
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-1] == views[start].shape[-1]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))
            start = end
        return F.normalize(self.projector(torch.cat(feats)), dim=1)

    def forward(self, batch):
        n, c = batch.views[0].shape[0], self.cfg
        z = self.embed(batch.views)
        scores = self.prototypes(z).chunk(len(batch.views))
        use_queue = bool(self.queues) and batch.epoch >= c["queue_start_epoch"]
        queue_full = use_queue and self.filled >= c["queue_length"]
        codes = []
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            w = self.prototypes.weight.float()
            for i, a in enumerate(self.ASSIGN):
                mine = z[a * n : (a + 1) * n].detach().float()
                s = mine @ w.T  # the scores again, in float32 for Sinkhorn
                if queue_full:  # past embeddings (this rank's share) scored with the current prototypes
                    s = torch.cat([self.queues[i].keys[:, dist.local_slice(c["queue_length"])].T @ w.T, s])
                codes.append(sinkhorn(s, c["epsilon"], c["sinkhorn_iterations"])[-n:])
                if use_queue:
                    self.queues[i].push(mine)
            if use_queue and not queue_full:
                self.filled += n * dist.world()
                self.queue_filled.fill_(self.filled)
        loss = swav_loss(list(scores), codes, list(self.ASSIGN), c["temperature"])
        return loss, dict(queue_used=float(queue_full))

    @torch.no_grad()
    def before_step(self, step, total_steps):
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def before_optimizer_step(self, step):
        if step < self.freeze_steps:
            self.prototypes.weight.grad = None
