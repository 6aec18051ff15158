"""PCL, Prototypical Contrastive Learning (Li et al. 2021): MoCo plus, after warm-up epochs, an E-step
each epoch (k-means at several K on the momentum encoder's features, with a concentration per
cluster) and the ProtoNCE loss that pulls each query to its prototypes."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..hostsync import to_device
from .base import float32_without_autocast
from .clustering import check_k, shared_kmeans, stream_seed
from .moco import MoCo, info_nce

log = logging.getLogger("sslstudy.methods.pcl")

# salesforce/PCL main_pcl.py run_kmeans
KMEANS = dict(niter=20, nredo=5, max_points_per_centroid=1000)
ALPHA = 10.0  # smoothing constant of the concentration


def concentration(
    sq_dist: np.ndarray, assign: np.ndarray, k: int, temperature: float, alpha: float = ALPHA
) -> np.ndarray:
    """phi (k,) of each cluster from k-means' squared distances (N,) and assignments (N,):
    mean distance to the centroid / log(members + alpha) for clusters with >= 2 members, the largest
    of those for the others, clipped to the 10th-90th percentile, rescaled to mean `temperature`."""
    n = np.bincount(assign, minlength=k)
    dist = np.bincount(assign, weights=np.sqrt(sq_dist.astype(np.float64)), minlength=k)
    many = n > 1
    phi = np.zeros(k)
    phi[many] = dist[many] / n[many] / np.log(n[many] + alpha)
    if not many.any():  # every cluster a singleton: no spread to measure (the official code divides by 0)
        return np.full(k, temperature)
    phi[~many] = phi[many].max()
    phi = np.clip(phi, np.percentile(phi, 10), np.percentile(phi, 90))
    return temperature * phi / phi.mean()


def sample_negatives(pos: torch.Tensor, k: int, r: int, gen: torch.Generator) -> torch.Tensor:
    """r cluster ids drawn without replacement among the k clusters that are no query's own (pos, on
    the host: which clusters are free decides how many numbers are drawn); fewer when the batch leaves
    fewer than r (the official code would fail there). On the host."""
    free = torch.ones(k, dtype=torch.bool)
    free[pos] = False
    ids = free.nonzero()[:, 0]
    return ids[torch.randperm(len(ids), generator=gen)[:r]]


@float32_without_autocast
def proto_nce(
    q: torch.Tensor, prototypes: torch.Tensor, phi: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
) -> torch.Tensor:
    """The prototype term of ProtoNCE at one granularity. q: (N, D) L2-normalised queries;
    prototypes: (K, D) L2-normalised centroids; phi: (K,) concentrations; pos: (N,) each query's
    cluster; neg: (r,) sampled other clusters -> scalar: cross-entropy of query i over
    [its prototype, the other queries' prototypes, the r negatives], each logit q.c / phi_c."""
    ids = torch.cat([pos, neg])
    logits = q @ prototypes[ids].T / phi[ids]
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


class PCL(MoCo):
    """MoCo's encoders, head, queue and InfoNCE, plus the E-step's prototypes and ProtoNCE."""

    queues = {"queue": "methods.pcl.queue"}

    def __init__(self, backbone, cfg, views, n_train, global_batch):
        ks = list(cfg["num_clusters"])
        check_k(ks, n_train, "methods.pcl.num_clusters")
        if cfg["proto_negatives"] >= min(ks):
            raise UserError(
                f"methods.pcl.proto_negatives = {cfg['proto_negatives']} must be smaller than the smallest of "
                f"methods.pcl.num_clusters ({min(ks)}); lower it in params"
            )
        super().__init__(backbone, cfg, views, n_train, global_batch)
        self.ks = ks
        for i, k in enumerate(self.ks):  # the E-step's result, per granularity
            self.register_buffer(f"assign{i}", torch.zeros(self.n_train, dtype=torch.long))
            self.register_buffer(f"prototypes{i}", torch.zeros(k, cfg["proj_dim"]))
            self.register_buffer(f"phi{i}", torch.ones(k))
        # the assignments on the host too: sampling negatives needs a batch's clusters there, and the
        # step must not read them back from the device
        self.assign_host = [np.zeros(self.n_train, dtype=np.int64) for _ in self.ks]
        self.register_load_state_dict_post_hook(PCL._read_assignments)

    @staticmethod
    def _read_assignments(model: "PCL", incompatible) -> None:
        model.assign_host = [model.clustering(i)[0].cpu().numpy() for i in range(len(model.ks))]  # on loading

    def clustering(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return getattr(self, f"assign{i}"), getattr(self, f"prototypes{i}"), getattr(self, f"phi{i}")

    @torch.no_grad()
    def before_epoch(self, epoch, ctx):
        if epoch < self.cfg["proto_warmup_epochs"]:
            return
        x = F.normalize(ctx.features(nn.Sequential(self.key_backbone, self.key_head)), dim=1)
        for i, k in enumerate(self.ks):
            centroids, assign, sq = shared_kmeans(x, k, stream_seed(ctx.seed, epoch, i), **KMEANS)
            self.assign_host[i] = assign.cpu().numpy()
            phi = concentration(sq.cpu().numpy(), self.assign_host[i], k, self.cfg["temperature"])
            a, p, f = self.clustering(i)
            a.copy_(assign)
            p.copy_(F.normalize(centroids, dim=1))
            f.copy_(torch.from_numpy(phi))
            log.info(
                "epoch %d: E-step k=%d, %d empty clusters, phi %.3f-%.3f",
                epoch + 1,
                k,
                int((torch.bincount(assign, minlength=k) == 0).sum()),
                float(f.min()),
                float(f.max()),
            )

    def forward(self, batch):
        c = self.cfg
        q, k = self.query_and_key(batch)
        loss = nce = info_nce(q, k, self.queue.keys.clone(), c["temperature"])
        logs = {"infonce": nce.detach()}
        if batch.epoch >= c["proto_warmup_epochs"]:
            proto, rows = 0.0, batch.index_on_host()
            for i, kk in enumerate(self.ks):
                assign, prototypes, phi = self.clustering(i)
                neg = sample_negatives(torch.from_numpy(self.assign_host[i][rows]), kk, c["proto_negatives"], batch.gen)
                proto = proto + proto_nce(q, prototypes, phi, assign[batch.index], to_device(neg, q.device))
            proto = proto / len(self.ks)
            loss = loss + proto
            logs["proto"] = proto.detach()
        self.queue.push(k)
        return loss, logs
