"""What a source hands to the ingester: the images on disk, their finest class, their split
(where the source has one) and the label hierarchy. Sources only list; decoding is shared."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ...errors import UserError

#: Image files an ImageFolder-like tree may hold (lower-case suffixes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class Listing:
    """``classes[k]`` is fine class k's names from the coarsest level to the finest (one per
    entry of ``levels``); image i is ``refs[i]`` (opened by ``reader(root, ref)``), of class
    ``fine[i]``, in split ``splits[i]`` (``None``: the source has no split, draw one)."""

    root: Path
    levels: list[str]
    classes: list[tuple[str, ...]]
    refs: list[Any] = field(default_factory=list)
    fine: list[int] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # per image: its file, as the labels table shows it
    reader: Callable[[Path, Any], Image.Image] | None = None
    files: list[str] = field(default_factory=list)  # files (relative to root) whose sizes stamp the listing
    notes: list[str] = field(default_factory=list)  # what was left out, printed for the user
    # segmentation sources: image i's label map is mask_reader(root, mask_refs[i]) (a palette image of
    # class ids of mask_classes[level], one level), checked by the source when it lists it
    mask_reader: Callable[[Path, Any], Image.Image] | None = None
    mask_refs: list[Any] = field(default_factory=list)
    mask_levels: list[str] = field(default_factory=list)
    mask_classes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, ref: Any, fine: int, split: str | None, name: str | None = None) -> None:
        self.refs.append(ref)
        self.fine.append(fine)
        self.splits.append(split)
        self.names.append(str(ref) if name is None else name)


def open_file(root: Path, ref: str) -> Image.Image:
    """The reader of sources whose images are files: ``ref`` is the path relative to ``root``."""
    return Image.open(root / ref)


def require_dir(path: Path, what: str, fix: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: no such folder ({what}); {fix}")
    return path


def require_file(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: no such file ({what}); {fix}")
    return path


def image_files(folder: Path, root: Path) -> tuple[list[str], int]:
    """Image files under ``folder`` (recursively, sorted, hidden entries skipped) as paths
    relative to ``root``, and the number of other files ignored."""
    found, other = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if f.lower().endswith(IMAGE_SUFFIXES):
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
            else:
                other += 1
    return found, other
