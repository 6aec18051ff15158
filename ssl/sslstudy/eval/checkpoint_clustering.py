"""Periodic clustering: every saved checkpoint of a run embedded and clustered with faiss k-means
(K = number of classes at each level), NMI/ARI against the labels, one row per epoch x level."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.packed import PackedDataset
from ..errors import UserError
from ..names import CHECKPOINTS, checkpoint_epoch
from .kmeans import cluster_scores


def cluster_checkpoints(
    run_dir: Path, datasets: dict[str, PackedDataset], cfg: dict, size: int, device="cpu", embedded: dict | None = None
) -> pd.DataFrame:
    """``datasets``: domain -> dataset; ``embedded``: (checkpoint folder, epoch) -> {domain: Features}
    of weights this job has embedded already (the final and epoch-0 checkpoints), reused, not embedded again."""
    from ..checkpoint import list_checkpoints, load_backbone
    from .features import embed_dataset

    ckpts = list_checkpoints(Path(run_dir))
    if not ckpts:
        raise UserError(f"{run_dir}: no {CHECKPOINTS}/epNNN.pt; re-run its pretraining")
    out = []
    for ck in ckpts:
        epoch = checkpoint_epoch(ck.name)
        known, backbone = (embedded or {}).get((ck.parent.resolve(), epoch), {}), None
        for on, ds in datasets.items():
            test = ds.split_indices("test")
            if on not in known and backbone is None:
                backbone = load_backbone(ck, device)[0]
            feats = known.get(on) or embed_dataset(backbone, ds, size, cfg["batch_size"], splits=("test",))
            x = feats.take(test)
            for i, level in enumerate(ds.levels):
                sc = cluster_scores(x, ds.label_array(level, test), k=ds.n_classes(level), seed=cfg["cluster_seed"])
                out += [(epoch, ds.name, i, level, m, sc[m]) for m in ("nmi", "ari")]
    return pd.DataFrame(out, columns=["epoch", "eval_domain", "level_index", "level", "metric", "value"])
