"""iNaturalist 2021 as released: ``train/`` (or ``train_mini/``) and ``val/`` hold one folder per
species named ``<id>_<Kingdom>_<Phylum>_<Class>_<Order>_<Family>_<Genus>_<epithet>``, beside
``train.json`` / ``val.json`` (COCO-style ``images``, ``annotations``, ``categories`` with the
taxonomy fields). The JSON files are used when present, else the folder names. Levels: kingdom ->
phylum -> class -> order -> family -> genus -> species. ``val`` is the test split (the public test
set has no labels)."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import UserError
from .listing import Listing, image_files, open_file, require_dir

LEVELS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]
RANKS = LEVELS[:-1]  # category fields; species is the category's ``name`` (genus + epithet)
_FIX = "pass the folder holding the iNat2021 train/ and val/ folders and their .json files"


def taxonomy_from_dir(name: str) -> tuple[str, ...]:
    """``00000_Animalia_Annelida_..._Lumbricus_terrestris`` -> (Animalia, ..., Lumbricus terrestris)."""
    parts = name.split("_", 7)
    if len(parts) != 8 or not parts[0].isdigit() or not all(parts):
        raise ValueError(name)
    return (*parts[1:7], f"{parts[6]} {parts[7].replace('_', ' ')}")


def _from_json(json_path: Path, listing_split: str, listing: Listing, cls: dict) -> None:
    try:
        d = json.loads(json_path.read_text(encoding="utf-8"))
        images = {int(im["id"]): im["file_name"] for im in d["images"]}
        cats = {int(c["id"]): (*(str(c[r]) for r in RANKS), str(c["name"])) for c in d["categories"]}
        anns = [(int(a["image_id"]), int(a["category_id"])) for a in d["annotations"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{json_path}: not an iNat2021 annotation file ({e.__class__.__name__}: {str(e)[:80]}); "
            f"it needs images (id, file_name), annotations (image_id, category_id) and categories "
            f"(id, name, {', '.join(RANKS)})"
        ) from None
    for image_id, cat in sorted(anns):
        if image_id not in images or cat not in cats:
            raise UserError(
                f"{json_path}: annotation of image {image_id} names a missing image or category {cat}; "
                f"use the released file"
            )
        path = cats[cat]
        listing.add(images[image_id], cls.setdefault(path, len(cls)), listing_split)
        listing.files.append(images[image_id])
    listing.files.append(json_path.name)


def _from_dirs(root: Path, split_dir: str, listing_split: str, listing: Listing, cls: dict) -> None:
    folder = require_dir(root / split_dir, f"iNat2021 {split_dir} images", _FIX)
    for sub in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        try:
            path = taxonomy_from_dir(sub)
        except ValueError:
            raise UserError(
                f"{folder / sub}: folder name is not <id>_<Kingdom>_..._<Genus>_<epithet>; {_FIX}"
            ) from None
        files, other = image_files(folder / sub, root)
        if other:
            listing.notes.append(f"{other} non-image file(s) in {folder / sub} ignored")
        k = cls.setdefault(path, len(cls))
        for f in files:
            listing.add(f, k, listing_split)
            listing.files.append(f)


def scan(root: str | Path, train_split: str = "train") -> Listing:
    root = require_dir(Path(root), "iNat2021", _FIX)
    if train_split not in ("train", "train_mini"):
        raise UserError(f"iNat2021 train split {train_split!r}: use train or train_mini")
    listing = Listing(root=root, levels=list(LEVELS), classes=[], reader=open_file)
    cls: dict[tuple[str, ...], int] = {}
    for split_dir, split in ((train_split, "train"), ("val", "test")):
        json_path = root / f"{split_dir}.json"
        if json_path.is_file():
            _from_json(json_path, split, listing, cls)
        else:
            _from_dirs(root, split_dir, split, listing, cls)
    if not listing.refs:
        raise UserError(f"{root}: no images listed in {train_split} or val; {_FIX}")
    listing.classes = sorted(cls, key=cls.get)
    return listing
