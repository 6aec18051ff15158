"""What the clustering methods (DeepCluster, PCL) share: the check of k against the training set,
seeds for their per-epoch random choices, and k-means run once (rank 0) and shared with all ranks."""

from __future__ import annotations

import numpy as np
import torch

from .. import distributed as dist
from ..errors import UserError
from ..eval.kmeans import kmeans


def check_k(ks: list[int], n_train: int, key: str) -> None:
    """Every k <= the number of training images (faiss would fail deep inside otherwise)."""
    too_big = [k for k in ks if k > n_train]
    if n_train and too_big:
        raise UserError(
            f"{key} = {too_big[0]} clusters but the training subset has only {n_train} images; "
            f"lower {key} in params to at most {n_train}"
        )


def local_features(ctx, encoder: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """This rank's share of ``ctx.features(encoder)``, without the gather, and the number of training
    images N: the encoder (eval mode) on its rows of the training subset (consecutive shares of
    ceil(N / ranks), the last one padded with the last image, as Context.features), float32 on
    ctx.device. One process: ctx.features itself."""
    if dist.world() == 1:
        x = ctx.features(encoder)
        return x, len(x)
    from ..eval.features import embed

    n = len(ctx.idx)
    per = -(-n // dist.world())
    mine = ctx.idx[np.minimum(np.arange(dist.rank() * per, (dist.rank() + 1) * per), n - 1)]
    return embed(encoder, ctx.dataset.images, mine, ctx.cfg["views"][0]["size"], ctx.device), n


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed for one random choice of one epoch (stream tells the choices apart), from the run seed."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0]) % 2**31


def shared_kmeans(x: torch.Tensor, k: int, seed: int, **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The project's k-means of x (N, d), run on rank 0 and sent to every rank, so all ranks train on the
    same pseudo-labels. Where x is, it runs: on a GPU, faiss's GPU index on this rank's GPU where faiss
    has GPUs, else torch's Lloyd there (eval.kmeans); on the CPU, faiss on the CPU, even on a GPU node.
    -> (centroids (k, d) float32, assignments (N,) int64, squared distances (N,) float32) on x's device."""
    n, d = x.shape
    if dist.rank() == 0:
        gpu = None if x.device.type == "cuda" else False
        c, a, sq = kmeans(x.detach().float().cpu().numpy(), k, seed=seed, gpu=gpu, **kw)
        out = [torch.from_numpy(v).to(x.device) for v in (c, a, sq)]
    else:
        out = [
            torch.zeros(k, d, device=x.device),
            torch.zeros(n, dtype=torch.long, device=x.device),
            torch.zeros(n, device=x.device),
        ]
    return tuple(dist.all_reduce_sum(v) for v in out)  # the other ranks add zeros: rank 0's values, exactly
