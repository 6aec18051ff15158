"""Corrupted copies of a packed domain (the quality axis): same images, labels and splits, each
image degraded one way. A copy is a pure function of the source folder, the corruption and the seed.
Per-pixel masks (masks.npy) are copied unchanged, at their full size also where ``lowres`` shrinks
the images: the dense probe scores predictions at the masks' resolution.

Corruptions, named in run ids as ``<kind><strength>`` (e.g. ``jpeg10``):

* ``downup<f>``     downsample by the factor f (bilinear, antialiased), upsample back: resolution is
                    lost, the size kept.
* ``jpeg<q>``       JPEG encode/decode at quality q (Pillow, 4:2:0 chroma subsampling).
* ``saltpepper<p>`` every pixel, with probability p, set to black or white (each half the time).
* ``blur<s>``       Gaussian blur with sigma s pixels (kernel 2*ceil(3s)+1, reflect padding).
* ``lowres<n>``     resized to n x n pixels (bilinear, antialiased): a smaller image, pretraining
                    then sees n-pixel views.
"""

from __future__ import annotations

import io
import math
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..names import image_size_after, parse_quality
from .packed import load_dataset, write_dataset

_CHUNK = 1024  # images per block, to bound memory on large domains


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(
        0, 3, 1, 2
    )  # a writable copy of a read-only memmap


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def corrupt_images(images: np.ndarray, tag: str, rng: np.random.Generator) -> np.ndarray:
    """Corrupted copy of a uint8 (N, H, W, 3) block; ``rng`` is only drawn from by saltpepper."""
    kind, s = parse_quality(tag)
    h = images.shape[1]
    if kind == "downup":
        if s < 1 or h / s < 1:
            raise UserError(f"{tag}: factor must be >= 1 and at most the image side {h}; fix quality.downup in params")
        x = _to_float(images)
        return _to_uint8(_resize(_resize(x, max(1, round(h / s))), h))
    if kind == "jpeg":
        if not (1 <= s <= 100 and s == int(s)):
            raise UserError(f"{tag}: JPEG quality must be an integer in 1..100; fix quality.jpeg in params")
        return _jpeg(images, int(s))
    if kind == "saltpepper":
        if not 0 < s < 1:
            raise UserError(f"{tag}: probability must be in (0, 1); fix quality.saltpepper in params")
        hit = rng.random(images.shape[:3]) < s
        white = rng.random(images.shape[:3]) < 0.5
        out = images.copy()
        out[hit & white] = 255
        out[hit & ~white] = 0
        return out
    if kind == "blur":
        if s <= 0:
            raise UserError(f"{tag}: sigma must be > 0; fix quality.blur in params")
        return _to_uint8(_gaussian_blur(_to_float(images), s))
    # lowres
    if not (2 <= s <= h and s == int(s)):
        raise UserError(f"{tag}: size must be an integer in 2..{h}; fix quality.lowres in params")
    return _to_uint8(_resize(_to_float(images), int(s)))


def corruption_seed(seed: int, domain: str, tag: str) -> list[int]:
    """The rng seed of one copy: the study seed, the domain and the corruption (stable across runs)."""
    return [int(seed), zlib.crc32(domain.encode()), zlib.crc32(tag.encode())]


def corrupt_dataset(src: str | Path, out: str | Path, tag: str, seed: int) -> None:
    """Write the corrupted copy of the packed folder ``src`` to ``out`` (atomically)."""
    ds = load_dataset(src)
    rng = np.random.default_rng(corruption_seed(seed, ds.name, tag))
    size = image_size_after(tag, ds.image_size)
    images = np.empty((len(ds), size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        for i in range(0, len(ds), _CHUNK):
            images[i : i + _CHUNK] = corrupt_images(np.asarray(ds.images[i : i + _CHUNK]), tag, rng)
    meta = dict(ds.meta, image_size=size, source=dict(corrupted=str(src), corruption=tag, seed=int(seed)))
    masks = None if ds.masks is None else np.asarray(ds.masks)
    write_dataset(out, images, ds.labels, meta, masks)
