"""Pooled domains (the domain axis): equal parts of several domains, as large as ONE of them, so that
a pooled run sees as many images as a single-domain run and size does not confound diversity.

The pool of domains d1..dk takes, from each split, ``n // k`` images of each domain (the first
``n mod k`` domains one more), where n is the smallest member's split size; each part is the prefix
of the member's class-balanced seeded order (as for subsets). Images are renumbered, domain order
first. When every member has the same label hierarchy it is kept; otherwise the pool's only label
level is ``source`` (which member an image came from) — pretraining does not use labels anyway.
Per-pixel masks come along when every member has masks with the same levels and classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..names import pool_name
from .packed import SPLITS, load_dataset, write_dataset
from .subsets import balanced_order


def _same_hierarchy(metas: list[dict]) -> bool:
    keys = ("levels", "classes", "parents")
    return all(all(m[k] == metas[0][k] for k in keys) for m in metas[1:])


def pool_dataset(sources: list[str | Path], out: str | Path, seed: int) -> None:
    """Write the equal-size pool of the packed folders ``sources`` to ``out`` (atomically)."""
    if len(sources) < 2:
        raise UserError(f"{out}: a pool needs at least two domains; fix domain.pools in params")
    dss = [load_dataset(s) for s in sources]
    sizes = {ds.image_size for ds in dss}
    if len(sizes) > 1:
        raise UserError(f"{out}: pooled domains have different image sizes {sorted(sizes)}; pool domains of one size")
    keep = _same_hierarchy([ds.meta for ds in dss])
    dense = all(ds.masks is not None and ds.meta["masks"] == dss[0].meta["masks"] for ds in dss)
    parts, rows, mask_parts = [], [], []
    for split in SPLITS:
        n = min(len(ds.split_indices(split)) for ds in dss)
        if n == 0:
            continue  # a split some domain lacks (the synthetic data has no val split)
        for j, ds in enumerate(dss):
            take = n // len(dss) + (1 if j < n % len(dss) else 0)
            idx = np.sort(balanced_order(ds.labels, seed, stratify=ds.levels[-1], split=split, dataset=ds.path)[:take])
            parts.append(np.asarray(ds.images[idx]))
            if dense:
                mask_parts.append(np.asarray(ds.masks[idx]))
            lab = ds.labels.set_index("index").loc[idx]
            frame = pd.DataFrame({"split": [split] * take, "domain": [ds.name] * take})
            if keep:
                for lv in ds.levels:
                    frame[lv] = lab[lv].to_numpy()
            else:
                frame["source"] = j
            rows.append(frame)
    labels = pd.concat(rows, ignore_index=True)
    labels.insert(0, "index", np.arange(len(labels)))
    names = [ds.name for ds in dss]
    if keep:
        hier = {k: dss[0].meta[k] for k in ("levels", "classes", "parents")}
    else:
        hier = dict(levels=["source"], classes={"source": names}, parents={})
    images = np.concatenate(parts)
    meta = dict(
        hier,
        name=pool_name(names),
        image_size=dss[0].image_size,
        n_images=len(images),
        source=dict(pool=[str(s) for s in sources], seed=int(seed)),
    )
    if dense:
        meta["masks"] = dss[0].meta["masks"]
    write_dataset(out, images, labels, meta, np.concatenate(mask_parts) if dense else None)
