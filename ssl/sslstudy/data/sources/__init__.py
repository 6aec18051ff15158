"""Readers of real image collections on disk, by name: each lists a collection (sslstudy.data.ingest
decodes it). ``imagenet`` is an ImageFolder tree (train/ and val/ class folders); ``voc`` is
segmentation data in the PASCAL VOC layout (its masks are ingested beside the images)."""

from __future__ import annotations

from importlib import import_module

#: source name -> (module, the scan options it takes besides the root)
SOURCES = {
    "imagefolder": ("imagefolder", ("hierarchy",)),
    "imagenet": ("imagefolder", ("hierarchy",)),
    "cifar100": ("cifar100", ()),
    "inat2021": ("inat2021", ("train_split",)),
    "places365": ("places365", ("hierarchy",)),
    "voc": ("voc", ()),
}


def scanner(source: str):
    return import_module(f"{__name__}.{SOURCES[source][0]}").scan
