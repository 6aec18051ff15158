"""On-disk dataset format ("packed" domain folder).

A domain is one folder holding exactly three files::

    images.npy   uint8 array (N, H, W, 3), written with np.save, read memory-mapped
    labels.csv   columns: index, split (train/val/test), domain, <level_0>, ..., <level_k> (coarse to
                 fine), then any extra columns (ingested data: file, where each image came from)
    meta.json    name, levels, classes, parents, image_size, n_images, source

and, for data with per-pixel labels (segmentation), a fourth::

    masks.npy    uint8 array (N, S, S, M): M label maps per image, one per entry of meta.json
                 ``masks.levels``, values indexing ``masks.classes[level]`` or 255 (ignore). S is
                 ``masks.size``: the images' side, or the original side when a corruption shrank
                 the images (the masks stay at full resolution).

Folders are hashed by DVC, so every byte written here is a pure function of the
inputs: ``meta.json`` uses sorted keys and a fixed indent, ``labels.csv`` uses
``\\n`` line endings, and nothing time- or version-dependent is recorded.

Writes are atomic: everything goes to a hidden sibling ``.<name>.tmp-<pid>`` that
is swapped into place only when complete, so an interrupted writer never leaves a
folder that looks finished.  ``load_dataset`` validates the folder and turns every
problem into a one-line :class:`~sslstudy.errors.UserError` naming the path and
the fix.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sslstudy.atomic import DiskFull, disk_full, out_of_space
from sslstudy.errors import UserError
from sslstudy.names import DATASET_FILES, IMAGES_FILE, LABELS_FILE, MASKS_FILE, META_FILE

SPLITS = ("train", "val", "test")
BASE_COLUMNS = ("index", "split", "domain")
META_KEYS = ("name", "levels", "classes", "parents", "image_size", "n_images", "source")
MASK_KEYS = ("levels", "classes", "size", "ignore")  # meta.json "masks" (only with masks.npy)

_REGENERATE = "regenerate it with `sslstudy synth` (or re-run the rule that writes it)"


@dataclass
class PackedDataset:
    """A loaded, validated domain folder.  ``images`` (and ``masks``, None without masks.npy) are
    read-only memmaps."""

    path: Path
    images: np.ndarray
    labels: pd.DataFrame
    meta: dict
    masks: np.ndarray | None = None

    @property
    def mask_levels(self) -> list[str]:
        """Levels of the per-pixel label maps (``[]`` without masks)."""
        return list(self.meta["masks"]["levels"]) if self.masks is not None else []

    def mask_classes(self, level: str) -> list[str]:
        return list(self.meta["masks"]["classes"][level])

    def require_masks(self) -> None:
        if self.masks is None:
            raise UserError(
                f"{self.path}: no {MASKS_FILE} (per-pixel labels); regenerate the built-in data with "
                f"`sslstudy synth` or ingest a segmentation dataset (source voc)"
            )

    def mask_array(self, level: str, indices: np.ndarray) -> np.ndarray:
        """(len(indices), S, S) uint8 label maps at mask ``level`` (255: ignore)."""
        self.require_masks()
        if level not in self.mask_levels:
            raise UserError(f"{self.path}: no mask level {level!r}; use one of {', '.join(self.mask_levels)}")
        return np.asarray(self.masks[np.asarray(indices, dtype=np.int64), :, :, self.mask_levels.index(level)])

    @property
    def levels(self) -> list[str]:
        """Hierarchy levels, coarse to fine (e.g. ``["coarse", "mid", "fine"]``)."""
        return list(self.meta["levels"])

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _check_level(self, level: str) -> None:
        if level not in self.meta["levels"]:
            raise UserError(f"{self.path}: unknown label level {level!r}; use one of {', '.join(self.meta['levels'])}")

    def n_classes(self, level: str) -> int:
        """Number of classes at ``level``."""
        self._check_level(level)
        return len(self.meta["classes"][level])

    def class_names(self, level: str) -> list[str]:
        self._check_level(level)
        return list(self.meta["classes"][level])

    def label_array(self, level: str, indices: np.ndarray | None = None) -> np.ndarray:
        """Integer labels (int64) at ``level`` for all rows or the given dataset indices."""
        self._check_level(level)
        y = self.labels[level].to_numpy(dtype=np.int64)
        return y if indices is None else y[np.asarray(indices, dtype=np.int64)]

    def split_indices(self, split: str) -> np.ndarray:
        """Dataset indices (the ``index`` column, int64, ascending) of ``split``."""
        if split not in SPLITS:
            raise UserError(f"{self.path}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        mask = (self.labels["split"] == split).to_numpy()
        return np.sort(self.labels["index"].to_numpy(dtype=np.int64)[mask])


# --------------------------------------------------------------------------- writing


def _meta_bytes(meta: dict) -> bytes:
    return (json.dumps(meta, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _labels_bytes(labels: pd.DataFrame) -> bytes:
    return labels.to_csv(index=False, lineterminator="\n").encode("utf-8")


def _check_before_write(path: Path, images: np.ndarray, labels: pd.DataFrame, meta: dict) -> None:
    """Cheap consistency checks so we never write a folder that load_dataset rejects."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(
            f"{path}: images must be a uint8 array of shape (N, H, W, 3), got "
            f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}; fix the generator"
        )
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UserError(f"{path}: meta is missing {', '.join(missing)}; fix the generator")
    if len(labels) != images.shape[0]:
        raise UserError(f"{path}: {len(labels)} label rows for {images.shape[0]} images; fix the generator")
    cols = list(BASE_COLUMNS) + list(meta["levels"])
    absent = [c for c in cols if c not in labels.columns]
    if absent:
        raise UserError(f"{path}: labels lack column(s) {', '.join(absent)}; fix the generator")


def _check_masks(path: Path, masks: np.ndarray | None, meta: dict, n: int) -> None:
    info = meta.get("masks")
    if masks is None and info is None:
        return
    if masks is None or info is None:
        raise UserError(f"{path}: masks and meta['masks'] go together (one is missing); fix the generator")
    missing = [k for k in MASK_KEYS if k not in info]
    if missing:
        raise UserError(f"{path}: meta['masks'] is missing {', '.join(missing)}; fix the generator")
    m, s = len(info["levels"]), int(info["size"])
    if not isinstance(masks, np.ndarray) or masks.dtype != np.uint8 or masks.shape != (n, s, s, m):
        raise UserError(
            f"{path}: masks must be uint8 of shape {(n, s, s, m)}, got "
            f"{getattr(masks, 'dtype', type(masks).__name__)} {getattr(masks, 'shape', '')}; fix the generator"
        )
    for j, level in enumerate(info["levels"]):
        k = len(info["classes"][level])
        plane = masks[..., j]
        bad = (plane >= k) & (plane != info["ignore"])
        if bad.any():
            raise UserError(
                f"{path}: mask level {level!r} holds value {int(plane[bad][0])} (image "
                f"{int(np.argwhere(bad)[0][0])}) outside its {k} classes and {info['ignore']}; fix the generator"
            )


def write_dataset(
    path: str | os.PathLike, images: np.ndarray, labels: pd.DataFrame, meta: dict, masks: np.ndarray | None = None
) -> None:
    """Atomically write a domain folder at ``path`` (replacing any existing one).

    ``labels`` columns are written in the canonical order ``index, split, domain,
    <levels...>`` followed by any extra columns.  ``meta['n_images']`` and
    ``meta['image_size']`` must agree with ``images``; ``masks`` (uint8 (N, S, S, M)) with
    ``meta['masks']``.
    """
    path = Path(path)
    images = np.ascontiguousarray(images)
    _check_before_write(path, images, labels, meta)
    _check_masks(path, masks, meta, images.shape[0])
    if int(meta["n_images"]) != images.shape[0] or int(meta["image_size"]) != images.shape[1]:
        raise UserError(
            f"{path}: meta says n_images={meta['n_images']}, image_size={meta['image_size']} but images are "
            f"{images.shape}; fix the generator"
        )
    order = list(BASE_COLUMNS) + list(meta["levels"])
    order += [c for c in labels.columns if c not in order]
    labels = labels[order].reset_index(drop=True)

    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{path.name}.tmp-{os.getpid()}"
    old = parent / f".{path.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    try:
        tmp.mkdir()
        with open(tmp / IMAGES_FILE, "wb") as fh:
            np.save(fh, images, allow_pickle=False)
        if masks is not None:
            with open(tmp / MASKS_FILE, "wb") as fh:
                np.save(fh, np.ascontiguousarray(masks), allow_pickle=False)
        (tmp / LABELS_FILE).write_bytes(_labels_bytes(labels))
        (tmp / META_FILE).write_bytes(_meta_bytes(meta))
        if path.exists() or path.is_symlink():
            if path.is_dir() and not path.is_symlink():
                os.rename(path, old)
            else:
                path.unlink()
        os.rename(tmp, path)
    except BaseException as e:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        # If we moved the old folder aside but failed to put the new one in, restore it.
        if old.exists() and not path.exists():
            os.rename(old, path)
        if not isinstance(e, DiskFull) and out_of_space(e):
            raise disk_full(path, images.nbytes + (masks.nbytes if masks is not None else 0)) from None
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- loading


def _load_meta(path: Path) -> dict:
    f = path / META_FILE
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{f}: not valid JSON ({exc.__class__.__name__}); {_REGENERATE}") from exc
    if not isinstance(meta, dict):
        raise UserError(f"{f}: expected a JSON object; {_REGENERATE}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UserError(f"{f}: missing key(s) {', '.join(missing)}; {_REGENERATE}")
    levels = meta["levels"]
    if not isinstance(levels, list) or not levels or not all(isinstance(x, str) for x in levels):
        raise UserError(f"{f}: 'levels' must be a non-empty list of level names; {_REGENERATE}")
    classes = meta["classes"]
    parents = meta["parents"]
    if not isinstance(classes, dict) or not isinstance(parents, dict):
        raise UserError(f"{f}: 'classes' and 'parents' must be objects keyed by level; {_REGENERATE}")
    for i, level in enumerate(levels):
        names = classes.get(level)
        if not isinstance(names, list) or not names:
            raise UserError(f"{f}: no class names for level {level!r}; {_REGENERATE}")
        if i == 0:
            continue
        par = parents.get(level)
        n_prev = len(classes[levels[i - 1]])
        if (
            not isinstance(par, list)
            or len(par) != len(names)
            or not all(isinstance(p, int) and 0 <= p < n_prev for p in par)
        ):
            raise UserError(
                f"{f}: 'parents[{level}]' must list, for each of the {len(names)} classes, "
                f"a class index of level {levels[i - 1]!r} (0..{n_prev - 1}); {_REGENERATE}"
            )
    for key in ("image_size", "n_images"):
        if not isinstance(meta[key], int) or meta[key] <= 0:
            raise UserError(f"{f}: {key!r} must be a positive integer; {_REGENERATE}")
    return meta


def _load_npy(f: Path) -> np.ndarray:
    try:
        with open(f, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise UserError(f"{f}: unreadable ({exc.__class__.__name__}); {_REGENERATE}") from exc
    if magic != b"\x93NUMPY":
        raise UserError(f"{f}: not a .npy file (bad magic bytes); {_REGENERATE}")
    try:
        arr = np.load(f, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated header, short data, pickled objects ...
        detail = str(exc).splitlines()[0][:80] if str(exc) else ""
        raise UserError(f"{f}: not a complete .npy array ({exc.__class__.__name__}: {detail}); {_REGENERATE}") from exc
    if not isinstance(arr, np.ndarray):
        raise UserError(f"{f}: expected a single array, not an archive; {_REGENERATE}")
    if arr.dtype != np.uint8:
        raise UserError(f"{f}: dtype is {arr.dtype}, expected uint8; {_REGENERATE}")
    if isinstance(arr, np.memmap):
        expected = int(arr.offset) + int(arr.nbytes)
        actual = f.stat().st_size
        if actual != expected:
            raise UserError(
                f"{f}: file has {actual} bytes but its header promises {expected} (incomplete write?); {_REGENERATE}"
            )
    return arr


def _load_images(path: Path) -> np.ndarray:
    arr = _load_npy(path / IMAGES_FILE)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise UserError(f"{path / IMAGES_FILE}: shape is {arr.shape}, expected (N, H, W, 3); {_REGENERATE}")
    return arr


def _load_masks(path: Path, meta: dict, n: int) -> np.ndarray | None:
    info = meta.get("masks")
    f = path / MASKS_FILE
    if info is None:
        if f.is_file():
            raise UserError(f"{f}: meta.json has no 'masks' entry describing it; {_REGENERATE}")
        return None
    if not isinstance(info, dict) or any(k not in info for k in MASK_KEYS):
        raise UserError(f"{path / META_FILE}: 'masks' must hold {', '.join(MASK_KEYS)}; {_REGENERATE}")
    if not f.is_file():
        raise UserError(f"{f}: missing file (meta.json lists masks); {_REGENERATE}")
    arr = _load_npy(f)
    want = (n, int(info["size"]), int(info["size"]), len(info["levels"]))
    if arr.shape != want:
        raise UserError(f"{f}: shape is {arr.shape}, expected {want} (meta.json masks); {_REGENERATE}")
    return arr


def _load_labels(path: Path, meta: dict, n_images: int) -> pd.DataFrame:
    f = path / LABELS_FILE
    levels = meta["levels"]
    try:
        df = pd.read_csv(f, dtype={"split": str, "domain": str}, keep_default_na=False)
    except Exception as exc:
        raise UserError(f"{f}: unreadable CSV ({exc.__class__.__name__}); {_REGENERATE}") from exc
    absent = [c for c in list(BASE_COLUMNS) + list(levels) if c not in df.columns]
    if absent:
        raise UserError(
            f"{f}: missing column(s) {', '.join(absent)} (meta.json levels: {', '.join(levels)}); {_REGENERATE}"
        )
    if len(df) != n_images:
        raise UserError(f"{f}: {len(df)} rows but images.npy holds {n_images} images; {_REGENERATE}")
    for col in ["index", *levels]:
        if not pd.api.types.is_integer_dtype(df[col]):
            raise UserError(f"{f}: column {col!r} must hold integers only; {_REGENERATE}")
    if not np.array_equal(df["index"].to_numpy(), np.arange(n_images)):
        raise UserError(f"{f}: column 'index' must be 0..{n_images - 1} in order; {_REGENERATE}")
    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        first = df.loc[bad_split, "split"].iloc[0]
        raise UserError(
            f"{f}: {int(bad_split.sum())} row(s) have split {first!r}; allowed: {', '.join(SPLITS)}; {_REGENERATE}"
        )
    for i, level in enumerate(levels):
        y = df[level].to_numpy()
        n = len(meta["classes"][level])
        if y.size and (y.min() < 0 or y.max() >= n):
            raise UserError(
                f"{f}: level {level!r} has labels in [{y.min()}, {y.max()}] but meta.json lists {n} classes; "
                f"{_REGENERATE}"
            )
        if i > 0 and y.size:
            par = np.asarray(meta["parents"][level], dtype=np.int64)
            prev = df[levels[i - 1]].to_numpy()
            wrong = par[y] != prev
            if wrong.any():
                row = int(np.flatnonzero(wrong)[0])
                raise UserError(
                    f"{f}: {int(wrong.sum())} row(s) (first: index {row}) contradict meta.json parents of "
                    f"level {level!r}; {_REGENERATE}"
                )
    return df


def load_dataset(path: str | os.PathLike) -> PackedDataset:
    """Open and validate a domain folder; images stay memory-mapped (read-only)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path}: no such dataset folder; generate it with `sslstudy synth` or check the path in params/"
        )
    for name in DATASET_FILES:
        if not (path / name).is_file():
            raise UserError(f"{path / name}: missing file; {_REGENERATE}")
    meta = _load_meta(path)
    images = _load_images(path)
    n = int(images.shape[0])
    if meta["n_images"] != n:
        raise UserError(f"{path / META_FILE}: n_images is {meta['n_images']} but images.npy holds {n}; {_REGENERATE}")
    if meta["image_size"] != images.shape[1]:
        raise UserError(
            f"{path / META_FILE}: image_size is {meta['image_size']} but images are {images.shape[1]} px high; "
            f"{_REGENERATE}"
        )
    labels = _load_labels(path, meta, n)
    return PackedDataset(path=path, images=images, labels=labels, meta=meta, masks=_load_masks(path, meta, n))
