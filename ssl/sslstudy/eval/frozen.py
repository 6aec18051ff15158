"""Evaluate a frozen backbone on a packed dataset at every level of its label hierarchy."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..augment import eval_view
from ..data.packed import PackedDataset
from .kmeans import cluster_scores
from .probes import knn_accuracy, linear_probe


@torch.no_grad()
def embed(backbone: torch.nn.Module, ds: PackedDataset, indices: np.ndarray, size: int, batch_size: int = 512) -> np.ndarray:
    device = next(backbone.parameters()).device
    out = []
    for i in range(0, len(indices), batch_size):
        batch = torch.from_numpy(np.asarray(ds.images[indices[i:i + batch_size]])).to(device)
        out.append(backbone(eval_view(batch, size)).float().cpu())
    return torch.cat(out).numpy()


def ancestors(meta: dict) -> dict[str, np.ndarray]:
    """For each level, the map finest class -> class at that level."""
    levels = meta["levels"]
    n_fine = len(meta["classes"][levels[-1]])
    up = {levels[-1]: np.arange(n_fine)}
    current = np.arange(n_fine)
    for child, parent in zip(levels[:0:-1], levels[-2::-1]):
        current = np.asarray(meta["parents"][child])[current]
        up[parent] = current
    return up


def level_accuracy(ds: PackedDataset, pred_fine: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Accuracy at every level of finest-class predictions mapped up the hierarchy (no retraining)."""
    up = ancestors(ds.meta)
    return {level: float(np.mean(up[level][pred_fine] == ds.label_array(level, test))) for level in ds.levels}


def evaluate(backbone: torch.nn.Module, ds: PackedDataset, cfg: dict, size: int) -> pd.DataFrame:
    """Tidy rows (level, metric, value) for kNN and k-means NMI/ARI at every level, and the paper's
    granularity protocol for the linear probe: trained on the finest labels, its predictions are
    mapped up the hierarchy to score the coarser levels."""
    tr, te = ds.split_indices("train"), ds.split_indices("test")
    x_tr, x_te = embed(backbone, ds, tr, size, cfg["batch_size"]), embed(backbone, ds, te, size, cfg["batch_size"])
    lab_tr, lab_te = ds.labels.set_index("index").loc[tr], ds.labels.set_index("index").loc[te]
    finest = ds.levels[-1]
    pred_fine = linear_probe(x_tr, lab_tr[finest].to_numpy(), x_te, ds.n_classes(finest),
                             epochs=cfg["linear_epochs"], seed=cfg["cluster_seed"])
    mapped = level_accuracy(ds, pred_fine, te)
    rows = []
    for level in ds.levels:
        y_tr, y_te = lab_tr[level].to_numpy(), lab_te[level].to_numpy()
        rows.append((level, "linear", mapped[level]))
        rows.append((level, "knn", knn_accuracy(x_tr, y_tr, x_te, y_te, k=cfg["knn_k"], temperature=cfg["knn_temperature"])))
        sc = cluster_scores(x_te, y_te, k=ds.n_classes(level), seed=cfg["cluster_seed"])
        rows += [(level, "nmi", sc["nmi"]), (level, "ari", sc["ari"])]
    df = pd.DataFrame(rows, columns=["level", "metric", "value"])
    df.insert(0, "level_index", df["level"].map({lv: i for i, lv in enumerate(ds.levels)}))
    return df
