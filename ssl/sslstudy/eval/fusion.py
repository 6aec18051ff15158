"""Representation fusion: concatenate the frozen features of two models and train one linear
classifier on them, beside each member alone under the same protocol (finest labels, mapped up)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from ..data.packed import PackedDataset
from .frozen import embed
from .lowshot import rows
from .probes import linear_probe


def fusion_scores(a: nn.Module, b: nn.Module, ds: PackedDataset, cfg: dict, size: int) -> pd.DataFrame:
    """Rows (member in {a, b, a+b}, level, metric=linear, value) on the test split of ``ds``."""
    tr, te = ds.split_indices("train"), ds.split_indices("test")
    finest = ds.levels[-1]
    y_tr = ds.label_array(finest, tr)
    feats = {name: (embed(m, ds, tr, size, cfg["batch_size"]), embed(m, ds, te, size, cfg["batch_size"]))
             for name, m in (("a", a), ("b", b))}
    feats["a+b"] = tuple(np.concatenate([feats["a"][i], feats["b"][i]], axis=1) for i in range(2))
    out = []
    for member, (x_tr, x_te) in feats.items():
        pred = linear_probe(x_tr, y_tr, x_te, ds.n_classes(finest), epochs=cfg["linear_epochs"], seed=cfg["cluster_seed"])
        out.append(rows(ds, pred, te, "linear").assign(member=member, dim=x_tr.shape[1]))
    return pd.concat(out, ignore_index=True)
