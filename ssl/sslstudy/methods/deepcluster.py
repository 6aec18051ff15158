"""DeepCluster (Caron et al. 2018): every epoch, k-means on the PCA-whitened, L2-normalised features
of the whole training set gives pseudo-labels; a freshly initialised linear classifier on top of the
network is trained on them with cross-entropy, every cluster visited about equally often."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist
from ..augment import gray_normalized
from ..errors import UserError
from ..eval.kmeans import assignment_scores
from ..models import mlp
from .base import Method
from .clustering import check_k, local_features, shared_kmeans, stream_seed

log = logging.getLogger("sslstudy.methods.deepcluster")
NO_NMI = -1.0  # the nmi buffer before a second clustering

KMEANS_ITERS = 20  # deepcluster clustering.py run_kmeans: niter = 20
EIGEN_FLOOR = 1e-8  # eigenvalues below this fraction of the largest are floored before whitening
CHUNK_BYTES = 1 << 28  # float64 features the whitening centres and projects at once (bounds its temporaries)


def pca_whiten(x: torch.Tensor, dim: int, n: int | None = None) -> torch.Tensor:
    """x: this rank's rows of the (n, d) features to cluster (the training subset split over the
    ranks in order, the last share padded; one process: all n rows) -> (n, dim) on every rank, in
    subset order: centred, projected on the top `dim` principal axes, each scaled by eigenvalue^-0.5
    (faiss PCAMatrix with eigen_power=-0.5), then every row L2-normalised.

    The mean and covariance are summed over the ranks in float64 (the padding left out) and the rows
    are projected CHUNK_BYTES at a time, so a rank holds its own rows, a d x d covariance and the
    (n, dim) result, never all n features (deterministic on CPU). Eigenvalues are floored at
    EIGEN_FLOOR x the largest, so directions without variance (dead units) stay near 0 instead of
    being blown up to unit variance."""
    n = len(x) if n is None else n
    rows = max(1, CHUNK_BYTES // (8 * x.shape[1]))
    real = x[: max(0, min(len(x), n - dist.rank() * len(x)))]  # this rank's rows less the padding
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for chunk in real.split(rows):
        total += chunk.double().sum(0)
    mean = dist.all_reduce_sum(total) / n
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for chunk in real.split(rows):
        centred = chunk.double() - mean
        cov.addmm_(centred.T, centred)
    evals, evecs = torch.linalg.eigh(dist.all_reduce_sum(cov) / n)  # ascending
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    evals = evals.clamp_min(EIGEN_FLOOR * float(evals[0]))
    project = evecs * evals.rsqrt()
    out = torch.cat([F.normalize((chunk.double() - mean) @ project, dim=1).float() for chunk in x.split(rows)])
    return dist.gather(out)[:n]


def uniform_over_clusters(labels: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """An epoch's order (N positions) visiting every non-empty cluster equally often
    (deepcluster util.py UnifLabelSampler): int(N / clusters) + 1 draws per cluster, with replacement
    only from clusters that small, then shuffled and cut to N."""
    n = len(labels)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]  # non-empty clusters only
    per = n // len(members) + 1
    draws = []
    for m in members:
        if len(m) <= per:
            pick = torch.randint(len(m), (per,), generator=gen)
        else:
            pick = torch.randperm(len(m), generator=gen)[:per]
        draws.append(m[pick.numpy()])
    order = np.concatenate(draws)
    return order[torch.randperm(len(order), generator=gen).numpy()][:n]


class Gray(nn.Module):
    """The grey version of normalised images: k-means then sees no colour (the original removes it
    from every input with a fixed Sobel layer; here only the clustered images lose it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gray_normalized(x)


class DeepCluster(Method):
    def __init__(self, *args):
        super().__init__(*args)
        c = self.cfg
        self.k = c["k"]
        check_k([self.k], self.n_train, "methods.deepcluster.k")
        # The clustered features: the output of an MLP on the backbone (AlexNet's fc6-fc7 without the
        # last ReLU), or the backbone's own output when proj_hidden is 0.
        dim = c["proj_hidden"] or self.backbone.out_dim
        self.body = mlp(self.backbone.out_dim, dim, dim, 2) if c["proj_hidden"] else nn.Identity()
        if c["pca_dim"] > dim or (self.n_train and c["pca_dim"] > self.n_train):
            raise UserError(
                f"methods.deepcluster.pca_dim = {c['pca_dim']} exceeds the clustered features' size "
                f"({dim} dims, {self.n_train} images); lower methods.deepcluster.pca_dim in params"
            )
        self.top = nn.Linear(dim, self.k)  # re-initialised every epoch
        self.register_buffer("labels", torch.full((self.n_train,), -1, dtype=torch.long))
        self.register_buffer("class_weight", torch.ones(self.k))
        # NMI vs the previous epoch's labels; NO_NMI (outside [0, 1]) until there is a previous epoch. Not NaN:
        # the NaN guard (sslstudy.divergence) refuses to checkpoint a state holding one.
        self.register_buffer("nmi", torch.tensor(NO_NMI))
        self.nmi_prev = math.nan  # nmi as a Python float (nan: none yet), for the step's logs without a host sync
        self.register_load_state_dict_post_hook(DeepCluster._read_nmi)

    @staticmethod
    def _read_nmi(model: "DeepCluster", incompatible) -> None:
        """Once, on loading a checkpoint (one written with NaN for "none yet" reads as NO_NMI)."""
        nmi = float(model.nmi)
        model.nmi_prev = nmi if nmi >= 0 else math.nan
        if not nmi >= 0:
            model.nmi.fill_(NO_NMI)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.backbone(x))

    @torch.no_grad()
    def before_epoch(self, epoch, ctx):
        encoder = nn.Sequential(self.backbone, self.body)
        # each rank whitens its share: the (N, proj_hidden) features are never gathered, only the (N, pca_dim)
        feats, n = local_features(ctx, nn.Sequential(Gray(), encoder) if self.cfg["cluster_gray"] else encoder)
        x = pca_whiten(feats, self.cfg["pca_dim"], n)
        del feats  # k-means runs without them
        _, labels, _ = shared_kmeans(x, self.k, stream_seed(ctx.seed, epoch, 0), niter=KMEANS_ITERS)
        if epoch > 0 and bool((self.labels >= 0).all()):
            nmi = assignment_scores(self.labels.cpu().numpy(), labels.cpu().numpy())["nmi"]
            self.nmi_prev = float(np.float32(nmi))  # what the float32 buffer holds
            self.nmi.fill_(self.nmi_prev)
        self.labels.copy_(labels)
        sizes = torch.bincount(labels, minlength=self.k).float()
        # inverse-size weights, normalised so a uniform clustering weighs every image 1
        self.class_weight.copy_(
            torch.where(sizes > 0, len(labels) / (int((sizes > 0).sum()) * sizes.clamp_min(1)), 0.0)
        )
        g = torch.Generator().manual_seed(stream_seed(ctx.seed, epoch, 1))
        self.top.weight.copy_(torch.randn(self.top.weight.shape, generator=g) * 0.01)
        self.top.bias.zero_()
        log.info(
            "epoch %d: k-means k=%d, %d empty clusters, largest %d images, NMI vs previous epoch %.4f",
            epoch + 1,
            self.k,
            int((sizes == 0).sum()),
            int(sizes.max()),
            self.nmi_prev,
        )

    def epoch_order(self, epoch, gen):
        if self.cfg["balance"] == "sampler":
            return uniform_over_clusters(self.labels.cpu().numpy(), gen)
        return super().epoch_order(epoch, gen)

    def forward(self, batch):
        x = torch.cat(batch.views)
        y = self.labels[batch.index].repeat(len(batch.views))
        logits = self.top(F.relu(self.embed(x))).float()
        weight = self.class_weight if self.cfg["balance"] == "loss" else None
        loss = F.cross_entropy(logits, y, weight=weight)
        logs = {} if math.isnan(self.nmi_prev) else {"nmi_prev": self.nmi_prev}
        return loss, logs

    def optim_groups(self, weight_decay):
        """The classifier gets its own group without momentum: as the official code re-creates its
        optimiser every epoch, no optimiser state carries over its re-initialisation."""
        top = {id(p) for p in self.top.parameters()}
        groups = super().optim_groups(weight_decay)
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in top]
        return groups + [dict(params=list(self.top.parameters()), weight_decay=weight_decay, momentum=0.0, lars=False)]
