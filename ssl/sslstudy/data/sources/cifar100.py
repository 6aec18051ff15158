"""CIFAR-100, python version: ``cifar-100-python/{train,test,meta}`` pickles. ``train`` and
``test`` hold ``data`` (N x 3072 uint8, the red, green then blue 32 x 32 planes of each image),
``fine_labels``, ``coarse_labels`` and ``filenames``; ``meta`` holds ``fine_label_names`` and
``coarse_label_names``. Levels: coarse (20 superclasses) -> fine (100 classes), official numbers."""

from __future__ import annotations

import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import UserError
from .listing import Listing, require_dir, require_file

FILES = ("train", "test", "meta")
_FIX = "pass the cifar-100-python folder of the official python release (or the folder holding it)"
# The pickles hold plain containers and numpy arrays only: refuse anything else they might name.
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


@lru_cache(maxsize=2)
def load_pickle(path: Path) -> dict[str, object]:
    """One CIFAR pickle as a dict with ``str`` keys (the release's keys are bytes)."""
    try:
        with open(path, "rb") as fh:
            obj = _SafeUnpickler(fh, encoding="bytes").load()
    except Exception as e:
        raise UserError(
            f"{path}: not a CIFAR-100 python pickle ({e.__class__.__name__}: {str(e)[:80]}); {_FIX}"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a pickled dict; {_FIX}")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(d: dict, key: str, path: Path):
    if key not in d:
        raise UserError(f"{path}: no {key!r} entry (has {', '.join(sorted(d))}); {_FIX}")
    return d[key]


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def read(root: Path, ref: tuple[str, int]) -> Image.Image:
    """Image ``row`` of pickle ``part`` as a 32 x 32 RGB image (planes -> pixels)."""
    part, row = ref
    data = np.asarray(load_pickle(root / part)["data"])
    return Image.fromarray(np.ascontiguousarray(data[row].reshape(3, 32, 32).transpose(1, 2, 0)))


def scan(root: str | Path) -> Listing:
    root = require_dir(Path(root), "CIFAR-100", _FIX)
    if not (root / "meta").is_file() and (root / "cifar-100-python").is_dir():
        root = root / "cifar-100-python"
    for f in FILES:
        require_file(root / f, "part of the CIFAR-100 python release", _FIX)
    meta = load_pickle(root / "meta")
    fine_names = [_text(x) for x in _field(meta, "fine_label_names", root / "meta")]
    coarse_names = [_text(x) for x in _field(meta, "coarse_label_names", root / "meta")]
    coarse_of: dict[int, tuple[int, str]] = {}
    parts = []
    for part in ("train", "test"):
        d = load_pickle(root / part)
        data = np.asarray(_field(d, "data", root / part))
        fine = [int(x) for x in _field(d, "fine_labels", root / part)]
        coarse = [int(x) for x in _field(d, "coarse_labels", root / part)]
        files = [_text(x) for x in _field(d, "filenames", root / part)]
        if (
            data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3072
            or not (len(fine) == len(coarse) == len(files) == data.shape[0])
        ):
            raise UserError(
                f"{root / part}: expected data of shape (N, 3072) uint8 and N labels and filenames, got "
                f"{data.dtype} {data.shape}, {len(fine)} fine, {len(coarse)} coarse, {len(files)} names; {_FIX}"
            )
        for i, (f, c) in enumerate(zip(fine, coarse)):
            if not (0 <= f < len(fine_names) and 0 <= c < len(coarse_names)):
                raise UserError(
                    f"{root / part}: image {i} has label fine {f} / coarse {c} outside the names in meta; {_FIX}"
                )
            if coarse_of.setdefault(f, (c, f"{part}[{i}]"))[0] != c:
                raise UserError(
                    f"{root / part}: fine class {fine_names[f]!r} is under coarse "
                    f"{coarse_names[coarse_of[f][0]]!r} at {coarse_of[f][1]} but {coarse_names[c]!r} at "
                    f"{part}[{i}]; the release has one superclass per class"
                )
        parts.append((part, fine, files))
    classes = [(coarse_names[coarse_of[f][0]] if f in coarse_of else "?", name) for f, name in enumerate(fine_names)]
    listing = Listing(root=root, levels=["coarse", "fine"], classes=classes, reader=read, files=list(FILES))
    for part, fine, files in parts:
        for row, (f, name) in enumerate(zip(fine, files)):
            listing.add((part, row), f, part, name=f"{part}/{name}")
    return listing
