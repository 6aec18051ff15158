"""Periodic clustering: every saved checkpoint of a run embedded and clustered with faiss k-means
(K = number of classes at each level), NMI/ARI against the labels, one row per epoch x level."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.packed import PackedDataset
from ..errors import UserError
from ..names import CHECKPOINTS, checkpoint_epoch
from .kmeans import cluster_scores


def cluster_checkpoints(run_dir: Path, datasets: list[PackedDataset], cfg: dict, size: int, device="cpu") -> pd.DataFrame:
    from ..train import embed, list_checkpoints, load_backbone

    ckpts = list_checkpoints(Path(run_dir))
    if not ckpts:
        raise UserError(f"{run_dir}: no {CHECKPOINTS}/epNNN.pt; re-run its pretraining")
    out = []
    for ck in ckpts:
        backbone, _ = load_backbone(ck, device)
        epoch = checkpoint_epoch(ck.name)
        for ds in datasets:
            test = ds.split_indices("test")
            x = embed(backbone, ds.images, test, size, batch_size=cfg["batch_size"]).cpu().numpy()
            for i, level in enumerate(ds.levels):
                sc = cluster_scores(x, ds.label_array(level, test), k=ds.n_classes(level), seed=cfg["cluster_seed"])
                out += [(epoch, ds.name, i, level, m, sc[m]) for m in ("nmi", "ari")]
    return pd.DataFrame(out, columns=["epoch", "eval_domain", "level_index", "level", "metric", "value"])
