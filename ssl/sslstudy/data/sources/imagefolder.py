"""ImageFolder trees: ``root/<class>/<image>`` (one class per folder, images found recursively),
or ImageNet-style ``root/{train,val[,test]}/<class>/<image>``. With ``train`` and ``val`` only,
``val`` is the test split (ImageNet's labelled held-out set); with all three each keeps its name."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from .hierarchy import attach_hierarchy
from .listing import Listing, image_files, open_file, require_dir

SPLIT_DIRS = ("train", "val", "test")


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(root: str | Path, hierarchy: str | Path | None = None) -> Listing:
    root = require_dir(Path(root), "an ImageFolder tree", "pass the folder that holds one sub-folder per class")
    top = _class_dirs(root)
    if top and set(top) <= set(SPLIT_DIRS) and "train" in top:
        split_of = {"train": "train", "val": "val" if "test" in top else "test", "test": "test"}
        parts = [(root / d, split_of[d]) for d in top]
    else:
        parts = [(root, None)]
    per_part = {folder: _class_dirs(folder) for folder, _ in parts}
    names = sorted({c for cs in per_part.values() for c in cs})
    if not names:
        raise UserError(
            f"{root}: no class folders; an ImageFolder tree is root/<class>/<image> (or root/train/<class>/<image>)"
        )
    levels, paths = attach_hierarchy(names, hierarchy, fine_level="class")
    listing = Listing(root=root, levels=levels, classes=paths, reader=open_file)
    cls = {c: i for i, c in enumerate(names)}
    ignored = 0
    for folder, split in parts:
        loose = sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        ignored += loose
        for c in per_part[folder]:
            files, other = image_files(folder / c, root)
            ignored += other
            for f in files:
                listing.add(f, cls[c], split)
    listing.files = list(listing.refs)
    if ignored:
        listing.notes.append(f"{ignored} file(s) that are not images in class folders (or loose beside them) ignored")
    return listing
