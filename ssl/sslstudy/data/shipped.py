"""Real-pixel test data from images that ship inside installed packages (nothing is downloaded).

``digits``: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797
8x8 grayscale images of 0-9 with 17 grey levels, from the UCI "optdigits" set), written as an
ImageFolder tree and ingested with ``sslstudy.data.ingest`` (source ``imagefolder``), exactly as
a user's collection would be. A different kind of data from the built-in synthetic domains:
real handwriting, grayscale, few pixels, 10 classes of about 180 images.

Pixels: grey level g in 0..16 -> round(255 g / 16), Pillow bicubic resize 8 -> ``size`` px (32),
converted to RGB (three equal channels), saved as PNG. The tree is
``<tree>/<digit>/<digit>-<index in load_digits, 4 digits>.png`` plus ``hierarchy.csv`` (the
header ``digit,group``, one row per digit), which ``attach_hierarchy`` reads; the packed dataset
has the levels ``group`` (3 classes) and ``digit`` (10). The grouping is by the digit's usual
printed shape:

    round     0 6 8 9   (closed loops)
    straight  1 4 7     (straight strokes only)
    curved    2 3 5     (open curves)

Splits are drawn by ingest (class-balanced, seeded; 10% val, 20% test per digit). Everything is
deterministic: the same Pillow and scikit-learn give the same PNG bytes and the same packed files.

    python -m sslstudy.data.shipped [--out data/digits] [--size 32] [--seed 0] [--tree DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: digit -> group (the ``group`` level); documented in the module docstring
DIGIT_GROUPS = {
    0: "round",
    6: "round",
    8: "round",
    9: "round",
    1: "straight",
    4: "straight",
    7: "straight",
    2: "curved",
    3: "curved",
    5: "curved",
}
GROUPS = ("round", "straight", "curved")
LEVELS = ("group", "digit")  # coarse -> fine
GREY_LEVELS = 16  # load_digits values run 0..16


def digits_pixels(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size, 3) uint8 images and (n,) int64 digits of sklearn's load_digits, in its order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = np.rint(d.images * (255.0 / GREY_LEVELS)).astype(np.uint8)  # (n, 8, 8)
    out = np.empty((len(grey), size, size, 3), dtype=np.uint8)
    for i, g in enumerate(grey):
        im = Image.fromarray(g)  # 2-D uint8: mode L
        if size != g.shape[0]:
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        out[i] = np.asarray(im.convert("RGB"))
    return out, d.target.astype(np.int64)


def write_digits_tree(tree: str | os.PathLike, size: int = 32) -> dict[str, Any]:
    """Write the ImageFolder tree and its hierarchy.csv under ``tree`` (created; existing files
    are overwritten). Returns the images, their digits, the relative file names (in load_digits
    order) and the hierarchy file's path."""
    tree = Path(tree)
    images, digits = digits_pixels(size)
    files = []
    for i, (im, y) in enumerate(zip(images, digits)):
        rel = f"{y}/{y}-{i:04d}.png"
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(path, optimize=False, compress_level=6)
        files.append(rel)
    hierarchy = tree.parent / f"{tree.name}-hierarchy.csv"
    rows = ["digit,group"] + [f"{k},{DIGIT_GROUPS[k]}" for k in range(10)]
    hierarchy.write_text("\n".join(rows) + "\n")
    return dict(images=images, digits=digits, files=files, tree=tree, hierarchy=hierarchy)


def build_digits(
    out: str | os.PathLike = "data/digits",
    *,
    size: int = 32,
    seed: int = 0,
    tree: str | os.PathLike | None = None,
    workers: int = 1,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the packed dataset ``out`` (its folder name is the dataset/domain name) from the
    digits; ``tree``: where the ImageFolder tree goes (kept), else a temporary folder (removed).
    ``seed`` seeds ingest's drawn splits. Returns ingest's summary."""
    from .ingest import ingest

    def _run(where: Path) -> dict[str, Any]:
        src = write_digits_tree(where, size)
        return ingest(
            "imagefolder",
            src["tree"],
            out,
            size=size,
            hierarchy=src["hierarchy"],
            seed=seed,
            workers=workers,
            force=force,
            progress=progress,
        )

    if tree is not None:
        return _run(Path(tree))
    with tempfile.TemporaryDirectory(prefix="digits-") as tmp:
        # a fixed folder name: ingest records the source folder's name in meta.json
        return _run(Path(tmp) / "digits-tree")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sslstudy.data.shipped", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/digits"), help="packed dataset folder (data/digits)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (32)")
    p.add_argument("--seed", type=int, default=0, help="seeds the drawn splits (0)")
    p.add_argument("--tree", type=Path, help="keep the ImageFolder tree here (default: a temporary folder)")
    p.add_argument("--force", action="store_true", help="re-ingest even if the output is up to date")
    a = p.parse_args(argv)
    r = build_digits(a.out, size=a.size, seed=a.seed, tree=a.tree, force=a.force)
    state = "up to date" if r["skipped"] else f"{r['images']} images"
    print(f"{r['out']}: {state} ({', '.join(f'{lv} {n}' for lv, n in r['levels'].items())})")


if __name__ == "__main__":
    main()
