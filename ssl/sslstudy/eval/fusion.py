"""Representation fusion: concatenate the cached frozen features of two models and train one linear
classifier on them, beside each member alone under the same protocol (finest labels, mapped up; the
multi-head probe's head chosen on val, test reported)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.packed import PackedDataset
from .features import Features, probe_splits
from .frozen import choose_linear
from .lowshot import rows


def fusion_scores(a: Features, b: Features, ds: PackedDataset, cfg: dict, device="cpu") -> pd.DataFrame:
    """Rows (member in {a, b, a+b}, level, metric=linear, value, split, chosen lr/wd) on the test
    split of ``ds``, from the two models' embedding caches of ``ds``."""
    sp = probe_splits(ds, cfg)
    finest = ds.levels[-1]
    feats = {name: {s: f.take(r) for s, r in sp.items()} for name, f in (("a", a), ("b", b))}
    feats["a+b"] = {s: np.concatenate([feats["a"][s], feats["b"][s]], axis=1) for s in sp}
    out = []
    for member, x in feats.items():
        pred, chosen = choose_linear(
            (x["fit"], ds.label_array(finest, sp["fit"])),
            (x["val"], ds.label_array(finest, sp["val"])),
            x["test"],
            ds.n_classes(finest),
            cfg,
            device,
        )
        out.append(rows(ds, pred, sp["test"], "linear", chosen).assign(member=member, dim=x["fit"].shape[1]))
    return pd.concat(out, ignore_index=True)
