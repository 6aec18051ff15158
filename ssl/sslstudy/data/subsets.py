"""Nested, class-balanced, seeded subsets of a split (for label-efficiency / data-size sweeps).

One class-balanced *order* of the split is built per (labels, seed, stratify, split):
each class's members are shuffled with the seed, then classes are interleaved
round-robin (round k takes the k-th member of every class that still has one, in a
freshly shuffled class order per round).  Every requested subset is a prefix of that
order, so smaller subsets are contained in larger ones and per-class counts differ
by at most one in every prefix (as long as no class has run out of members).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from sslstudy.atomic import atomic_path
from sslstudy.errors import UserError


def _where(dataset: str | os.PathLike | None) -> str:
    return str(dataset) if dataset is not None else "the dataset"


def balanced_order(
    labels: pd.DataFrame,
    seed: int,
    stratify: str = "fine",
    split: str = "train",
    dataset: str | os.PathLike | None = None,
) -> np.ndarray:
    """Dataset indices (``index`` column, int64) of ``split`` in the class-balanced seeded order."""
    for col in ("index", "split", stratify):
        if col not in labels.columns:
            raise UserError(
                f"{_where(dataset)}: labels have no column {col!r}; check `stratify` in params/ "
                f"(available: {', '.join(map(str, labels.columns))})"
            )
    rows = labels[labels["split"] == split]
    if rows.empty:
        raise UserError(f"{_where(dataset)}: no {split!r} images; check the split name in params/")
    idx = rows["index"].to_numpy(dtype=np.int64)
    _, cls = np.unique(rows[stratify].to_numpy(), return_inverse=True)
    cls = cls.astype(np.int64).ravel()
    n_cls = int(cls.max()) + 1

    rng = np.random.default_rng(int(seed))
    # Shuffle within class: sort by (class, random key) and rank inside each class.
    within_key = rng.random(idx.size)
    grouped = np.lexsort((within_key, cls))
    counts = np.bincount(cls, minlength=n_cls)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(idx.size, dtype=np.int64)
    rank[grouped] = np.arange(idx.size) - np.repeat(starts, counts)
    # Round-robin: round = rank; inside a round, classes in a fresh random order.
    n_rounds = int(counts.max())
    class_pos = np.argsort(rng.random((n_rounds, n_cls)), axis=1).argsort(axis=1)
    order = np.lexsort((class_pos[rank, cls], rank))
    return idx[order]


def nested_subsets(
    labels: pd.DataFrame,
    sizes: Iterable[int],
    seed: int,
    stratify: str = "fine",
    split: str = "train",
    dataset: str | os.PathLike | None = None,
) -> dict[int, np.ndarray]:
    """``{size: sorted int64 dataset indices}``; every smaller subset is inside every larger one.

    ``dataset`` (a path or name) is only used in error messages.
    """
    sizes = [int(s) for s in sizes]
    order = balanced_order(labels, seed, stratify=stratify, split=split, dataset=dataset)
    out: dict[int, np.ndarray] = {}
    for s in sizes:
        if s < 1:
            raise UserError(f"subset size {s} requested for {_where(dataset)}; sizes must be >= 1 in params/")
        if s > order.size:
            raise UserError(
                f"subset of {s} images requested but {_where(dataset)} has only {order.size} {split} images; "
                f"lower the size in params/"
            )
        out[s] = np.sort(order[:s])
    return out


def fractions_to_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Sizes ``round(n * f)`` (half up, at least 1) for fractions in (0, 1]."""
    out = []
    for f in fractions:
        f = float(f)
        if not (0.0 < f <= 1.0):
            raise UserError(f"subset fraction {f} must be in (0, 1]; fix it in params/")
        out.append(max(1, int(math.floor(n * f + 0.5))))
    return out


def save_indices(path: str | os.PathLike, idx: np.ndarray) -> None:
    """Atomically write a 1-D int64 ``.npy`` of indices (temp file, then os.replace)."""
    path = Path(path)
    arr = np.asarray(idx)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise UserError(f"{path}: indices must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64, copy=False)
    with atomic_path(path, arr.nbytes) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def load_indices(path: str | os.PathLike) -> np.ndarray:
    """Read indices written by :func:`save_indices` (validated: 1-D integer)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such index file; re-run the rule that writes the subsets")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(
            f"{path}: not a valid .npy index file ({exc.__class__.__name__}); delete it and re-run the subset rule"
        ) from exc
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"{path}: expected a 1-D integer array; delete it and re-run the subset rule")
    return arr.astype(np.int64, copy=False)
