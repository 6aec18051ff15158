"""Evaluate a frozen backbone's cached features (features.py) on a packed dataset at every level of
its label hierarchy, the probes' hyper-parameters chosen on the val split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.packed import PackedDataset
from .features import Features, probe_splits
from .kmeans import cluster_scores
from .probes import knn_predict, knn_predict_grid, linear_heads


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


def choose_linear(
    fit: tuple, val: tuple, test_x: np.ndarray, n_classes: int, cfg: dict, device
) -> tuple[np.ndarray, dict]:
    """The multi-head linear probe (eval.linear_lr x eval.linear_wd) trained on ``fit`` = (x, finest
    labels); the head with the best accuracy on ``val`` = (x, finest labels) predicts ``test_x``
    (the first in grid order on a tie). Returns (test predictions, the chosen hyper-parameters)."""
    heads = linear_heads(
        fit[0],
        fit[1],
        n_classes,
        cfg["linear_lr"],
        cfg["linear_wd"],
        epochs=cfg["linear_epochs"],
        seed=cfg["cluster_seed"],
        device=device,
    )
    best = int(np.argmax((heads.predict(val[0]) == val[1]).mean(axis=1)))
    lr, wd = heads.grid[best]
    return heads.predict(test_x)[best], dict(linear_lr=lr, linear_wd=wd)


def choose_knn(fit: tuple, val: tuple, test_x: np.ndarray, cfg: dict, device) -> tuple[np.ndarray, dict]:
    """kNN with the k of eval.knn_k that scores best on ``val`` (the first on a tie)."""
    on_val = knn_predict_grid(fit[0], fit[1], val[0], cfg["knn_k"], temperature=cfg["knn_temperature"], device=device)
    k = max(cfg["knn_k"], key=lambda kk: (float(np.mean(on_val[kk] == val[1])), -cfg["knn_k"].index(kk)))
    return knn_predict(fit[0], fit[1], test_x, k=k, temperature=cfg["knn_temperature"], device=device), dict(knn_k=k)


def tidy(rows: list[dict]) -> pd.DataFrame:
    """Rows (level_index, level, metric, value, split, and the chosen knn_k / linear_lr / linear_wd)."""
    df = pd.DataFrame(rows)
    for col in ("knn_k", "linear_lr", "linear_wd"):
        if col not in df:
            df[col] = np.nan
    df["knn_k"] = df["knn_k"].astype("Int64")
    return df[["level_index", "level", "metric", "value", "split", "knn_k", "linear_lr", "linear_wd"]]


def evaluate(feats: Features, ds: PackedDataset, cfg: dict, device) -> pd.DataFrame:
    """Tidy rows (level, metric, value, split, chosen hyper-parameters) for kNN and k-means NMI/ARI
    at every level, and the paper's granularity protocol for the linear probe: trained on the finest
    labels, its predictions are mapped up the hierarchy to score the coarser levels. The probes
    train on the fit split, choose their hyper-parameters on val and score test (features.probe_splits);
    k-means clusters the test split."""
    sp = probe_splits(ds, cfg)
    x = {name: feats.take(rows) for name, rows in sp.items()}
    finest = ds.levels[-1]
    y_fine = {name: ds.label_array(finest, rows) for name, rows in sp.items()}
    pred_fine, chosen = choose_linear(
        (x["fit"], y_fine["fit"]), (x["val"], y_fine["val"]), x["test"], ds.n_classes(finest), cfg, device
    )
    mapped = level_accuracy(ds, pred_fine, sp["test"])
    rows = []
    for i, level in enumerate(ds.levels):
        y = {name: ds.label_array(level, r) for name, r in sp.items()}
        base = dict(level_index=i, level=level, split="test")
        rows.append(dict(base, metric="linear", value=mapped[level], **chosen))
        pred, k = choose_knn((x["fit"], y["fit"]), (x["val"], y["val"]), x["test"], cfg, device)
        rows.append(dict(base, metric="knn", value=float(np.mean(pred == y["test"])), **k))
        sc = cluster_scores(x["test"], y["test"], k=ds.n_classes(level), seed=cfg["cluster_seed"])
        rows += [dict(base, metric=m, value=sc[m]) for m in ("nmi", "ari")]
    return tidy(rows)
