"""Places365-Standard as released: ``categories_places365.txt`` (``/a/abbey 0``), the file lists
``places365_train_standard.txt`` (``/a/abbey/00000000.jpg 0``) and ``places365_val.txt``
(``Places365_val_00000001.jpg 165``), and the image folders (``data_256`` or ``train_256`` or the
large-image / torchvision spellings; ``val_256`` or ``val_large``). One level (``scene``) unless
a hierarchy CSV is given (class names as ``abbey`` or ``/a/abbey``). ``val`` is the test split."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from .hierarchy import attach_hierarchy
from .listing import Listing, open_file, require_dir, require_file

CATEGORIES = "categories_places365.txt"
LISTS = {"train": "places365_train_standard.txt", "val": "places365_val.txt"}
IMAGE_DIRS = {
    "train": ("data_256", "train_256", "data_256_standard", "data_large", "train_large", "data_large_standard"),
    "val": ("val_256", "val_large"),
}
_FIX = "pass the Places365 folder holding categories_places365.txt, the file lists and the image folders"


def scene_name(category: str) -> str:
    """``/a/apartment_building/outdoor`` or ``'/a/abbey'`` -> ``apartment_building/outdoor``, ``abbey``."""
    c = category.strip().strip("'\"")
    parts = c.strip("/").split("/")
    return "/".join(parts[1:]) if len(parts) > 1 and len(parts[0]) == 1 else c.strip("/")


def _pairs(path: Path) -> list[tuple[str, int]]:
    out = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, _, label = line.strip().rpartition(" ")
        if not name or not label.lstrip("-").isdigit():
            raise UserError(f"{path}:{line_no}: expected '<name> <number>', got {line.strip()!r}; {_FIX}")
        out.append((name, int(label)))
    return out


def scan(root: str | Path, hierarchy: str | Path | None = None) -> Listing:
    root = require_dir(Path(root), "Places365", _FIX)
    cats = _pairs(require_file(root / CATEGORIES, "the category list", _FIX))
    if sorted(i for _, i in cats) != list(range(len(cats))):
        raise UserError(f"{root / CATEGORIES}: category numbers must be 0..{len(cats) - 1}, each once; {_FIX}")
    names = [scene_name(c) for c, _ in sorted(cats, key=lambda x: x[1])]
    levels, paths = attach_hierarchy(names, hierarchy, fine_level="scene", normalize=scene_name)
    listing = Listing(root=root, levels=levels, classes=paths, reader=open_file, files=[CATEGORIES, *(LISTS.values())])
    for split, list_name in LISTS.items():
        entries = _pairs(require_file(root / list_name, f"the {split} file list", _FIX))
        folder = next((d for d in IMAGE_DIRS[split] if (root / d).is_dir()), None)
        if folder is None:
            raise UserError(f"{root}: no {split} image folder (looked for {', '.join(IMAGE_DIRS[split])}); {_FIX}")
        for name, label in entries:
            if not 0 <= label < len(names):
                raise UserError(f"{root / list_name}: {name} has label {label}, not in {CATEGORIES}; {_FIX}")
            ref = f"{folder}/{name.lstrip('/')}"
            listing.add(ref, label, "train" if split == "train" else "test")
            listing.files.append(ref)
    return listing
