"""Segmentation data in the PASCAL VOC layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
(palette PNGs whose pixel values are class ids, 255 = ignore: object borders and void) and
``ImageSets/Segmentation/{train,val}.txt`` (one id a line; ``val`` is the test split).

The masks become the packed folder's ``masks.npy`` (one level, ``class``: VOC's 21 classes, the
background first). The image-level label (one level, ``class``) is the mask's most frequent
object class (ties: the smaller id; background only where the mask has no object). Every mask is
read once here: one of a different size than its image, not a palette (or grey) PNG, or with a
class id outside the palette stops the scan with an error naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import UserError
from ...names import IGNORE
from .listing import Listing, open_file, require_dir, require_file

CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
LEVEL = "class"
IMAGES, MASKS, SETS = "JPEGImages", "SegmentationClass", "ImageSets/Segmentation"
SPLITS = {"train": "train", "val": "test"}
_FIX = "pass the folder holding JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/ (e.g. VOCdevkit/VOC2012)"


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 class ids of a VOC mask, checked: a palette (or grey) PNG whose values are
    class ids of CLASSES or IGNORE."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            ids = np.asarray(im) if mode in ("P", "L") else None
    except OSError as e:
        raise UserError(f"{path}: unreadable mask ({e.__class__.__name__}); re-extract the dataset") from None
    if ids is None:
        raise UserError(
            f"{path}: mask is a {mode} image, not a palette PNG of class ids; use the dataset's "
            f"SegmentationClass PNGs as released (values are class ids, {IGNORE} = ignore)"
        )
    bad = (ids >= len(CLASSES)) & (ids != IGNORE)
    if bad.any():
        raise UserError(
            f"{path}: class id {int(ids[bad][0])} is outside the palette (0..{len(CLASSES) - 1} and "
            f"{IGNORE} = ignore); fix or remove this mask"
        )
    return ids


def dominant(ids: np.ndarray) -> int:
    """The most frequent object class of a mask (0 when it has none)."""
    counts = np.bincount(ids[ids != IGNORE].ravel(), minlength=len(CLASSES))[1:]
    return int(np.argmax(counts)) + 1 if counts.any() else 0


def _ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def open_mask(root: Path, ref: str) -> Image.Image:
    return Image.open(root / ref)


def scan(root: str | Path) -> Listing:
    root = require_dir(Path(root), "a PASCAL VOC folder", _FIX)
    for d in (IMAGES, MASKS):
        require_dir(root / d, f"VOC {d}", _FIX)
    listing = Listing(
        root=root,
        levels=[LEVEL],
        classes=[(c,) for c in CLASSES],
        reader=open_file,
        mask_reader=open_mask,
        mask_levels=[LEVEL],
        mask_classes={LEVEL: list(CLASSES)},
    )
    seen: dict[str, str] = {}
    for part, split in SPLITS.items():
        listed = require_file(root / SETS / f"{part}.txt", f"the {part} id list", _FIX)
        listing.files.append(f"{SETS}/{part}.txt")
        for i in _ids(listed):
            if i in seen:
                raise UserError(f"{listed}: id {i} is also in {seen[i]}.txt; each image belongs to one split")
            seen[i] = part
            image, mask = f"{IMAGES}/{i}.jpg", f"{MASKS}/{i}.png"
            require_file(root / image, f"the image of id {i} in {listed.name}", _FIX)
            ids = read_mask(require_file(root / mask, f"the mask of id {i} in {listed.name}", _FIX))
            with Image.open(root / image) as im:
                w, h = im.size
            if ids.shape != (h, w):
                raise UserError(
                    f"{root / mask}: mask is {ids.shape[1]}x{ids.shape[0]} but its image {image} is "
                    f"{w}x{h}; a mask must match its image pixel for pixel"
                )
            listing.add(image, dominant(ids), split)
            listing.mask_refs.append(mask)
            listing.files += [image, mask]
    return listing
