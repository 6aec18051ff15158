"""Small replicas of real collections in their released on-disk layouts, made from generated
images (nothing is downloaded). Each builder returns what the ingested labels must equal."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(rng: np.random.Generator, h: int = 40, w: int = 48) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def truncated_jpeg(rng: np.random.Generator, path: Path) -> None:
    """A JPEG cut in half: PIL opens it, then fails reading the pixels."""
    save(noise_image(rng, 64, 64), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------- ImageFolder


def synth_imagefolder(root: Path, n_images: int, size: int = 32, seed: int = 0) -> dict:
    """An ImageFolder tree of the built-in synthetic 'natural' domain: root/<fine class>/<i>.<ext>
    (PNG, so pixels survive exactly; every 7th image WebP lossless, every 11th a second PNG
    folder level), plus hierarchy.csv (fine,mid,coarse). Returns the source images and labels."""
    from sslstudy.data.synth import N_FINE, class_names, generate_domain

    n_gen = -(-n_images // N_FINE) * N_FINE
    images, labels, meta = generate_domain("natural", n_gen, image_size=size, seed=seed)
    images, labels = images[:n_images], labels.iloc[:n_images]
    names = class_names()
    files = []
    for i, fine in enumerate(labels["fine"].to_numpy()):
        sub = f"{names['fine'][fine]}/batch{i % 2}/" if i % 11 == 0 else f"{names['fine'][fine]}/"
        ext = "webp" if i % 7 == 0 else "png"
        path = root / f"{sub}img{i:05d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path, **({"lossless": True} if ext == "webp" else {}))
        files.append(path.relative_to(root).as_posix())
    mid_of = meta["parents"]["fine"]
    coarse_of = meta["parents"]["mid"]
    rows = ["fine,mid,coarse"] + [
        f"{f},{names['mid'][mid_of[k]]},{names['coarse'][coarse_of[mid_of[k]]]}" for k, f in enumerate(names["fine"])
    ]
    (root.parent / "hierarchy.csv").write_text("\n".join(rows) + "\n")
    return dict(
        images=images,
        labels=labels.reset_index(drop=True),
        files=files,
        names=names,
        hierarchy=root.parent / "hierarchy.csv",
    )


# --------------------------------------------------------------------------- CIFAR-100


def cifar100(root: Path, per_class: dict[str, int], seed: int = 0) -> dict:
    """cifar-100-python/{train,test,meta} as the python release pickles them: dicts with bytes
    keys; data (N, 3072) uint8 as R, G, B planes; labels as lists of ints; filenames as bytes."""
    rng = np.random.default_rng(seed)
    fine_names = [f"fine{k:02d}".encode() for k in range(100)]
    coarse_names = [f"super{k:02d}".encode() for k in range(20)]
    coarse_of = rng.permutation(np.repeat(np.arange(20), 5))  # 5 classes per superclass, shuffled
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for part, n in per_class.items():
        fine = rng.permutation(np.repeat(np.arange(100), n))
        pixels = rng.integers(0, 256, (fine.size, 32, 32, 3), dtype=np.uint8)
        d = {
            b"batch_label": f"{part} batch".encode(),
            b"filenames": [f"img_{part}_{i:05d}.png".encode() for i in range(fine.size)],
            b"fine_labels": fine.tolist(),
            b"coarse_labels": coarse_of[fine].tolist(),
            b"data": pixels.transpose(0, 3, 1, 2).reshape(fine.size, 3072),
        }
        (folder / part).write_bytes(pickle.dumps(d, protocol=2))
        out[part] = dict(pixels=pixels, fine=fine, coarse=coarse_of[fine])
    meta = {b"fine_label_names": fine_names, b"coarse_label_names": coarse_names}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return dict(
        parts=out,
        coarse_of=coarse_of,
        folder=folder,
        fine_names=[x.decode() for x in fine_names],
        coarse_names=[x.decode() for x in coarse_names],
    )


# --------------------------------------------------------------------------- iNat2021

#: kingdom, phylum, class, order, family, genus, epithet; the genus Morus is both a gannet and a
#: mulberry (a real homonym): two classes at the genus level.
INAT_SPECIES = [
    ("Animalia", "Annelida", "Clitellata", "Haplotaxida", "Lumbricidae", "Lumbricus", "terrestris"),
    ("Animalia", "Arthropoda", "Insecta", "Hymenoptera", "Apidae", "Apis", "mellifera"),
    ("Animalia", "Arthropoda", "Insecta", "Hymenoptera", "Apidae", "Bombus", "terrestris"),
    ("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina"),
]
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")


def inat2021(root: Path, n_train: int = 3, n_val: int = 2, seed: int = 0) -> dict:
    """train/ and val/ species folders ``<id>_<Kingdom>_..._<Genus>_<epithet>`` holding JPEGs, and
    train.json / val.json in the released COCO-style format. The first val image of species 1 is
    a truncated JPEG, the second val image of species 2 is listed but missing."""
    rng = np.random.default_rng(seed)
    categories = []
    for cid, tax in enumerate(INAT_SPECIES):
        dir_name = f"{cid:05d}_" + "_".join(tax)
        categories.append(
            dict(
                id=cid,
                name=f"{tax[5]} {tax[6]}",
                common_name=f"common {cid}",
                supercategory=tax[2],
                **dict(zip(RANKS, tax[:6])),
                specific_epithet=tax[6],
                image_dir_name=dir_name,
            )
        )
    expected, broken = {}, []
    image_id = 0
    for split, n in (("train", n_train), ("val", n_val)):
        images, annotations = [], []
        for cat in categories:
            for j in range(n):
                file_name = f"{split}/{cat['image_dir_name']}/{rng.bytes(8).hex()}.jpg"
                path = root / file_name
                if split == "val" and (cat["id"], j) in ((1, 0), (2, 1)):
                    broken.append(file_name)
                    if cat["id"] == 1:
                        truncated_jpeg(rng, path)
                else:
                    save(noise_image(rng), path)
                images.append(
                    dict(
                        id=image_id,
                        width=48,
                        height=40,
                        file_name=file_name,
                        license=1,
                        rights_holder="someone",
                        date="2020-06-01 10:00:00+00:00",
                        latitude=1.0,
                        longitude=2.0,
                        location_uncertainty=10,
                    )
                )
                annotations.append(dict(id=image_id, image_id=image_id, category_id=cat["id"]))
                expected[file_name] = (split, cat["id"])
                image_id += 1
        doc = dict(
            info=dict(
                year=2021, version="2021", description="replica", contributor="tests", url="", date_created="2021-03-01"
            ),
            images=images,
            categories=categories,
            annotations=annotations,
            licenses=[dict(id=1, name="CC BY", url="")],
        )
        (root / f"{split}.json").write_text(json.dumps(doc))
    return dict(categories=categories, expected=expected, broken=broken)


# --------------------------------------------------------------------------- Places365

PLACES = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bedroom", "/c/canyon", "/k/kitchen", "/l/lake/natural"]
PLACES_TREE = {  # scene: (level 2, level 1)
    "abbey": ("cultural or historical building/place", "outdoor, man-made"),
    "apartment_building/outdoor": ("houses, cabins, gardens, and farms", "outdoor, man-made"),
    "bedroom": ("home or hotel", "indoor"),
    "canyon": ("mountains, hills, desert, sky", "outdoor, natural"),
    "kitchen": ("home or hotel", "indoor"),
    "lake/natural": ("water, ice, snow", "outdoor, natural"),
}


def places365(root: Path, n_train: int = 4, n_val: int = 2, seed: int = 0) -> dict:
    """categories_places365.txt, places365_train_standard.txt (``/a/abbey/00000001.jpg 0``) with
    data_256/, places365_val.txt (``Places365_val_00000001.jpg 3``) with val_256/, and a 3-level
    hierarchy CSV (category,level2,level1 with the category spelled '/a/abbey')."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "categories_places365.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(PLACES)))
    train, val, expected = [], [], {}
    for i, c in enumerate(PLACES):
        for j in range(n_train):
            name = f"{c}/{j + 1:08d}.jpg"
            save(noise_image(rng, 256, 256), root / "data_256" / name.lstrip("/"))
            train.append(f"{name} {i}")
            expected[f"data_256/{name.lstrip('/')}"] = ("train", i)
    k = 0
    for _ in range(n_val):
        for i in rng.permutation(len(PLACES)):
            k += 1
            name = f"Places365_val_{k:08d}.jpg"
            save(noise_image(rng, 256, 256), root / "val_256" / name)
            val.append(f"{name} {i}")
            expected[f"val_256/{name}"] = ("test", int(i))
    (root / "places365_train_standard.txt").write_text("\n".join(train) + "\n")
    (root / "places365_val.txt").write_text("\n".join(val) + "\n")
    csv_path = root.parent / "places_hierarchy.csv"
    csv_path.write_text(
        "category,level2,level1\n"
        + "".join(
            f'\'{c}\',"{PLACES_TREE[c.split("/", 2)[2]][0]}","{PLACES_TREE[c.split("/", 2)[2]][1]}"\n' for c in PLACES
        )
    )
    return dict(expected=expected, hierarchy=csv_path)


# --------------------------------------------------------------------------- PASCAL VOC segmentation


def voc_palette() -> list[int]:
    """VOC's colour map (the bit-interleaved one its devkit builds), 256 RGB triples flattened."""
    pal = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def voc_mask(ids: np.ndarray, path: Path) -> None:
    """A palette PNG of class ids, as SegmentationClass/ holds them."""
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def voc(root: Path, n_train: int = 6, n_val: int = 4, seed: int = 0) -> dict:
    """VOCdevkit/VOC2012-style folder: JPEGImages/<id>.jpg (h x w varies), SegmentationClass/<id>.png
    (a background image with one object rectangle of class 1 + k % 20 and a 255 border around it,
    plus a small square of class 15, person, below it), ImageSets/Segmentation/{train,val}.txt.
    Returns each id's full-size mask, its split and its dominant class."""
    rng = np.random.default_rng(seed)
    expected = {}
    lists = {"train": [], "val": []}
    for k in range(n_train + n_val):
        split = "train" if k < n_train else "val"
        i = f"2007_{k:06d}"
        h, w = (60, 80) if k % 2 else (72, 64)
        ids = np.zeros((h, w), dtype=np.uint8)
        cls = 1 + k % 20
        top, left = h // 4, w // 4
        ids[top - 1 : top + h // 2 + 1, left - 1 : left + w // 2 + 1] = 255  # the object's border: ignore
        ids[top : top + h // 2, left : left + w // 2] = cls
        ids[3 * h // 4 + 2 : 3 * h // 4 + 6, w // 2 - 2 : w // 2 + 2] = 15  # a small person below it
        save(noise_image(rng, h, w), root / "JPEGImages" / f"{i}.jpg")
        voc_mask(ids, root / "SegmentationClass" / f"{i}.png")
        lists[split].append(i)
        expected[i] = dict(mask=ids, split="train" if split == "train" else "test", cls=cls)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for split, ids in lists.items():
        (sets / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in lists["train"] + lists["val"]))
    return expected
