"""Built-in deterministic synthetic image domains.

This stands in for ImageNet / iNaturalist / remote-sensing data in a tiny-scale study
of self-supervised learning.  Every domain shares one 3-level label hierarchy whose
classes are defined purely by *structure*:

* coarse (4)  - object outline: disk, square, triangle (upright), cross (plus sign)
* mid   (16)  - pattern inside the object: hstripes, vstripes, checker, rings
* fine  (64)  - the pattern's frequency: 2, 3, 4 or 5 cycles across the object

Fine classes of one mid class therefore differ only in a detail (stripe count), so
fine-grained recognition is harder than coarse.  Every class is mirror-symmetric
about the vertical axis (horizontal flips never change a label) and is defined
relative to the object (so random crops / rescaling keep it).

Everything SimCLR-style augmentations randomise is a per-image *nuisance* drawn
independently of the label: object colours (any hue; the object's two pattern
colours and the background get a random permutation of three well-separated
luminance levels), background colour and texture, position, scale, brightness and
contrast.  Colour statistics therefore carry (almost) no label information.

Per-pixel labels (``masks.npy``, the dense probe's targets) come from the same drawn geometry:
a pixel belongs to the object where its anti-aliased coverage is at least one half (the signed
distance at the pixel centre is <= 0); mask level ``coarse`` is 0 for background and 1 + the
outline class on the object, ``mid`` 0 and 1 + the mid class (outline and pattern). Computing
them draws nothing from the RNG, so the images are the same bytes with or without masks.

Domains differ in image statistics, not in class definitions:

* ``natural`` - smooth two-colour gradient backgrounds, mid-size objects, saturated colours
* ``texture`` - busy three-octave coloured value-noise backgrounds, strong grain, smaller objects
* ``aerial``  - top-down look: muted earthy ground with field patches and high-frequency
  grain, larger objects in muted colours, low contrast

Bit-reproducibility: the output bytes are a pure function of the arguments.  Only
numpy's ``default_rng`` (``random``/``uniform``/``integers``/``permutation``) is used,
and pixel arrays only see correctly rounded float32 operations (+ - * / sqrt abs
floor min max and comparisons), never SIMD transcendental functions whose last ulp
may differ between CPUs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from sslstudy.atomic import atomic_path
from sslstudy.data.packed import write_dataset
from sslstudy.errors import UserError
from sslstudy.names import IGNORE

GENERATOR_VERSION = 2  # 2: masks.npy beside the images (the images are unchanged)
DOMAINS = ("natural", "texture", "aerial")
LEVELS = ("coarse", "mid", "fine")
SHAPES = ("disk", "square", "triangle", "cross")
PATTERNS = ("hstripes", "vstripes", "checker", "rings")
CYCLES = (2, 3, 4, 5)
N_COARSE = len(SHAPES)
N_MID = N_COARSE * len(PATTERNS)
N_FINE = N_MID * len(CYCLES)
MASK_LEVELS = ("coarse", "mid")  # the per-pixel label maps, in masks.npy's last axis
BACKGROUND = "background"
CHUNK = 512  # images rendered per vectorised batch (fixed: part of the RNG stream layout)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_F32 = np.float32


# --------------------------------------------------------------------------- hierarchy


def class_names() -> dict[str, list[str]]:
    """Class names per level (coarse to fine)."""
    mid = [f"{s}-{p}" for s in SHAPES for p in PATTERNS]
    fine = [f"{m}-c{c}" for m in mid for c in CYCLES]
    return {"coarse": list(SHAPES), "mid": mid, "fine": fine}


def mask_classes() -> dict[str, list[str]]:
    """Class names of each mask level: background, then that level's classes."""
    names = class_names()
    return {level: [BACKGROUND, *names[level]] for level in MASK_LEVELS}


def class_parents() -> dict[str, list[int]]:
    """Parent class index (in the previous level) for each class of the non-root levels."""
    return {
        "mid": [i // len(PATTERNS) for i in range(N_MID)],
        "fine": [i // len(CYCLES) for i in range(N_FINE)],
    }


# --------------------------------------------------------------------------- domain styles

# Ranges are (low, high) for uniform draws.  diameter is a fraction of the image side.
_STYLES: dict[str, dict] = {
    "natural": dict(
        diameter=(0.46, 0.70),
        obj_sat=(0.60, 1.00),
        bg_sat=(0.45, 0.95),
        bg_hue_spread=0.30,
        contrast=(0.80, 1.10),
        brightness=(-0.08, 0.08),
        grain=0.012,
    ),
    "texture": dict(
        diameter=(0.40, 0.56),
        obj_sat=(0.40, 1.00),
        bg_sat=(0.50, 1.00),
        bg_hue_spread=0.50,
        contrast=(0.75, 1.05),
        brightness=(-0.08, 0.08),
        grain=0.045,
        noise_amp=(0.08, 0.06, 0.06),  # amplitudes of the 4-, 8- and 16-cell noise octaves
    ),
    "aerial": dict(
        diameter=(0.60, 0.84),
        obj_sat=(0.12, 0.40),
        bg_hue=(0.04, 0.30),  # browns, ochres, olive / yellow-greens
        bg_sat=(0.20, 0.50),
        contrast=(0.48, 0.68),
        brightness=(-0.06, 0.06),
        grain=0.06,
        patch_amp=0.07,
        fine_amp=0.05,
    ),
}


def domain_seed(seed: int, domain: str) -> np.random.SeedSequence:
    """SeedSequence for ``domain``: depends on (seed, domain name) only, never on Python's salted hash()."""
    name_key = int.from_bytes(hashlib.sha256(domain.encode("utf-8")).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), name_key])


# --------------------------------------------------------------------------- colour helpers
# (per-image parameter arrays; pixel arrays never touch these)


def _hue_rgb(h: np.ndarray) -> np.ndarray:
    """Fully saturated RGB (value 1) for hue ``h`` in [0, 1): the HSV formula via min/max/abs only."""
    h = np.asarray(h, dtype=np.float64)[..., None]
    n = np.array([5.0, 3.0, 1.0])
    k = np.mod(n + h * 6.0, 6.0)
    return 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _colour(hue: np.ndarray, sat: np.ndarray, lum: np.ndarray) -> np.ndarray:
    """RGB colours (…, 3) with exact luminance ``lum`` (Rec.601 weights), hue ``hue`` and
    saturation ``sat`` in [0, 1] as a fraction of the largest in-gamut chroma."""
    lum = np.clip(np.asarray(lum, dtype=np.float64), 0.0, 1.0)[..., None]
    c = _hue_rgb(hue)
    # explicit weighted sum (not BLAS/matmul, whose FMA use and summation order vary by CPU)
    y = c[..., 0] * _LUMA[0] + c[..., 1] * _LUMA[1] + c[..., 2] * _LUMA[2]
    d = c - y[..., None]  # chroma direction with zero luminance
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(d > 1e-12, (1.0 - lum) / d, np.inf)
        down = np.where(d < -1e-12, lum / -d, np.inf)
    kmax = np.minimum(up, down).min(axis=-1, keepdims=True)
    kmax = np.where(np.isfinite(kmax), kmax, 0.0)
    return np.clip(lum + np.asarray(sat, dtype=np.float64)[..., None] * kmax * d, 0.0, 1.0)


# --------------------------------------------------------------------------- pixel helpers


def _value_noise(grid: np.ndarray, size: int) -> np.ndarray:
    """Smooth bilinear (smoothstep-eased) upsampling of per-image grids (B, G+1, G+1) -> (B, S, S)."""
    g = grid.shape[1] - 1
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (g / size)
    i0 = np.minimum(np.floor(pos).astype(np.int64), g - 1)
    f = (pos - i0).astype(_F32)
    f = f * f * (_F32(3.0) - _F32(2.0) * f)
    fy, fx = f[:, None], f[None, :]
    a = grid[:, i0][:, :, i0]
    b = grid[:, i0][:, :, i0 + 1]
    c = grid[:, i0 + 1][:, :, i0]
    d = grid[:, i0 + 1][:, :, i0 + 1]
    top = a + (b - a) * fx
    bot = c + (d - c) * fx
    return top + (bot - top) * fy


def _blocks(grid: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upsampling of (B, G, G) grids -> (B, S, S) (field patches)."""
    g = grid.shape[1]
    idx = np.minimum((np.arange(size) * g) // size, g - 1)
    return grid[:, idx][:, :, idx]


def _square_wave(p: np.ndarray, period_px: np.ndarray) -> np.ndarray:
    """Anti-aliased 0/1 square wave of phase ``p`` (in periods); ``period_px`` broadcasts."""
    t = np.abs(p - np.floor(p) - _F32(0.5))  # 0.5 at integer phase, 0 at half phase
    return np.clip((t - _F32(0.25)) * period_px + _F32(0.5), _F32(0.0), _F32(1.0))


_SQ3_2 = _F32(np.sqrt(3.0) / 2.0)


def _sdf(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance-like field in object units (negative inside, boundary at 0)."""
    au, av = np.abs(u), np.abs(v)
    if shape == 0:  # disk of radius 1
        return np.sqrt(u * u + v * v) - _F32(1.0)
    if shape == 1:  # axis-aligned square, half-side 0.86
        return np.maximum(au, av) - _F32(0.86)
    if shape == 2:  # upright equilateral triangle, inradius 0.66, bbox centred
        rho = _F32(0.66)
        vs = v - _F32(0.33)  # centroid sits below the bbox centre
        return np.maximum(vs - rho, _SQ3_2 * au - _F32(0.5) * vs - rho)
    if shape == 3:  # plus sign: two bars of half-width 0.36
        w = _F32(0.36)
        one = _F32(1.0)
        return np.minimum(np.maximum(au - one, av - w), np.maximum(au - w, av - one))
    raise ValueError(shape)


def _pattern(pattern: int, u: np.ndarray, v: np.ndarray, cycles: np.ndarray, period_px: np.ndarray) -> np.ndarray:
    """Pattern weight in [0, 1]; ``cycles`` full periods across the object's diameter (2 units)."""
    half = cycles * _F32(0.5)
    if pattern == 0:  # horizontal stripes
        return _square_wave((v + _F32(1.0)) * half, period_px)
    if pattern == 1:  # vertical stripes
        return _square_wave((u + _F32(1.0)) * half, period_px)
    if pattern == 2:  # checker board
        a = _square_wave((u + _F32(1.0)) * half, period_px)
        b = _square_wave((v + _F32(1.0)) * half, period_px)
        return a + b - _F32(2.0) * a * b
    if pattern == 3:  # concentric rings around the object centre
        return _square_wave(np.sqrt(u * u + v * v) * half, period_px)
    raise ValueError(pattern)


# --------------------------------------------------------------------------- parameters


def _draw_params(rng: np.random.Generator, domain: str, n: int) -> dict[str, np.ndarray]:
    """All per-image nuisance parameters (independent of the labels)."""
    st = _STYLES[domain]
    p: dict[str, np.ndarray] = {}
    diam = rng.uniform(*st["diameter"], size=n)
    r = diam / 2.0
    margin = 0.92 * r
    p["r"] = r
    p["cx"] = margin + rng.random(n) * (1.0 - 2.0 * margin)
    p["cy"] = margin + rng.random(n) * (1.0 - 2.0 * margin)

    # Three well-separated luminance levels, randomly assigned to (background, colour A, colour B).
    l0 = rng.uniform(0.06, 0.22, size=n)
    l1 = l0 + rng.uniform(0.24, 0.34, size=n)
    l2 = l1 + rng.uniform(0.24, 0.34, size=n)
    lv = np.stack([l0, l1, l2], axis=1)
    order = np.argsort(rng.random((n, 3)), axis=1)
    lv = np.take_along_axis(lv, order, axis=1)
    l_bg, l_a, l_b = lv[:, 0], lv[:, 1], lv[:, 2]

    p["col_a"] = _colour(rng.random(n), rng.uniform(*st["obj_sat"], size=n), l_a)
    p["col_b"] = _colour(rng.random(n), rng.uniform(*st["obj_sat"], size=n), l_b)

    if domain == "aerial":
        h1 = rng.uniform(*st["bg_hue"], size=n)
        h2 = rng.uniform(*st["bg_hue"], size=n)
    else:
        h1 = rng.random(n)
        h2 = np.mod(h1 + rng.uniform(-st["bg_hue_spread"], st["bg_hue_spread"], size=n), 1.0)
    p["bg1"] = _colour(h1, rng.uniform(*st["bg_sat"], size=n), l_bg + rng.uniform(-0.05, 0.05, size=n))
    p["bg2"] = _colour(h2, rng.uniform(*st["bg_sat"], size=n), l_bg + rng.uniform(-0.05, 0.05, size=n))

    if domain == "natural":
        dx = rng.uniform(-1.0, 1.0, size=n)
        dy = rng.uniform(-1.0, 1.0, size=n)
        norm = np.sqrt(dx * dx + dy * dy) + 1e-6
        strength = rng.uniform(0.8, 1.6, size=n)
        p["grad_x"] = dx / norm * strength
        p["grad_y"] = dy / norm * strength

    p["contrast"] = rng.uniform(*st["contrast"], size=n)
    p["brightness"] = rng.uniform(*st["brightness"], size=n)
    return p


def _labels(rng: np.random.Generator, n: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Balanced fine labels in random order and a split balanced per fine class."""
    per = n // N_FINE
    fine = rng.permutation(np.repeat(np.arange(N_FINE), per))
    n_test = int(np.floor(per * test_fraction + 0.5))
    n_test = min(max(n_test, 1), per - 1)
    keys = rng.random(n)
    order = np.lexsort((keys, fine))  # grouped by class, random within class
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(np.arange(N_FINE) * per, per)
    is_test = rank < n_test
    return fine.astype(np.int64), is_test


# --------------------------------------------------------------------------- rendering


def _render_chunk(
    rng: np.random.Generator, domain: str, fine: np.ndarray, p: dict[str, np.ndarray], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """-> images (B, S, S, 3) uint8 and masks (B, S, S, len(MASK_LEVELS)) uint8."""
    st = _STYLES[domain]
    b = fine.shape[0]
    mid = fine // len(CYCLES)
    coarse = mid // len(PATTERNS)
    pattern = mid % len(PATTERNS)
    cycles = np.asarray(CYCLES, dtype=_F32)[fine % len(CYCLES)]

    coords = ((np.arange(size, dtype=np.float64) + 0.5) / size).astype(_F32)
    xs = coords[None, None, :]
    ys = coords[None, :, None]

    def col(name: str) -> np.ndarray:
        return p[name].astype(_F32)[:, None, None, :]

    def per(name: str) -> np.ndarray:
        return p[name].astype(_F32)[:, None, None]

    # ---- background
    one = _F32(1.0)
    if domain == "natural":
        g = (xs - _F32(0.5)) * per("grad_x") + (ys - _F32(0.5)) * per("grad_y") + _F32(0.5)
        g = np.clip(g, _F32(0.0), one)
        bg = col("bg1") + (col("bg2") - col("bg1")) * g[..., None]
    elif domain == "texture":
        a4, a8, a16 = st["noise_amp"]
        mix = _value_noise(rng.random((b, 7, 7), dtype=_F32), size)
        lum = _value_noise(rng.uniform(-1.0, 1.0, (b, 5, 5)).astype(_F32), size) * _F32(a4)
        lum = lum + _value_noise(rng.uniform(-1.0, 1.0, (b, 9, 9)).astype(_F32), size) * _F32(a8)
        lum = lum + _value_noise(rng.uniform(-1.0, 1.0, (b, 17, 17)).astype(_F32), size) * _F32(a16)
        bg = col("bg1") + (col("bg2") - col("bg1")) * mix[..., None] + lum[..., None]
    elif domain == "aerial":
        cells = int(rng.integers(3, 6))  # one patch layout scale per chunk keeps things vectorised
        patches = _blocks(rng.random((b, cells, cells), dtype=_F32), size)
        lum = (patches - _F32(0.5)) * _F32(2.0 * st["patch_amp"])
        lum = lum + _value_noise(rng.uniform(-1.0, 1.0, (b, 17, 17)).astype(_F32), size) * _F32(st["fine_amp"])
        bg = col("bg1") + (col("bg2") - col("bg1")) * patches[..., None] + lum[..., None]
    else:  # pragma: no cover - guarded by generate_domain
        raise ValueError(domain)

    # ---- object in its own frame: u, v in [-1, 1] across the object's bounding box
    r = per("r")
    u = (xs - per("cx")) / r
    v = (ys - per("cy")) / r
    px_per_unit = r * _F32(size)  # pixels per object unit
    alpha = np.empty((b, size, size), dtype=_F32)
    weight = np.empty((b, size, size), dtype=_F32)
    inside = np.empty((b, size, size), dtype=bool)
    for s in range(N_COARSE):
        sel = np.flatnonzero(coarse == s)
        if sel.size:
            d = _sdf(s, u[sel], v[sel])
            alpha[sel] = np.clip(_F32(0.5) - d * px_per_unit[sel], _F32(0.0), one)
            inside[sel] = d <= _F32(0.0)
    for k in range(len(PATTERNS)):
        sel = np.flatnonzero(pattern == k)
        if sel.size:
            c = cycles[sel][:, None, None]
            period_px = px_per_unit[sel] * _F32(2.0) / c
            weight[sel] = _pattern(k, u[sel], v[sel], c, period_px)
    obj = col("col_a") + (col("col_b") - col("col_a")) * weight[..., None]
    img = bg + (obj - bg) * alpha[..., None]

    # ---- photometric nuisances and sensor grain
    img = (img - _F32(0.5)) * per("contrast")[..., None] + _F32(0.5) + per("brightness")[..., None]
    grain = rng.uniform(-1.0, 1.0, (b, size, size, 1)).astype(_F32) * _F32(st["grain"])
    img = img + grain
    img = np.clip(img, _F32(0.0), one) * _F32(255.0) + _F32(0.5)
    masks = np.stack([np.where(inside, 1 + level[:, None, None], 0) for level in (coarse, mid)], axis=-1)
    return np.floor(img).astype(np.uint8), masks.astype(np.uint8)


# --------------------------------------------------------------------------- public API


def _validate(domain: str, n_images: int, image_size: int, seed: int, test_fraction: float) -> None:
    if domain not in _STYLES:
        raise UserError(f"unknown synthetic domain {domain!r}; use one of {', '.join(DOMAINS)} in params/")
    if not isinstance(n_images, (int, np.integer)) or n_images <= 0 or n_images % N_FINE:
        raise UserError(
            f"synthetic n_images={n_images} must be a positive multiple of {N_FINE} (the number of fine classes, "
            "so every class gets the same count); "
            f"e.g. use {max(N_FINE * 2, (int(n_images) // N_FINE) * N_FINE)} in params/"
        )
    if n_images // N_FINE < 2:
        raise UserError(
            f"synthetic n_images={n_images} leaves {n_images // N_FINE} image per fine class; "
            f"use at least {2 * N_FINE} so each class has train and test images"
        )
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise UserError(f"synthetic image_size={image_size} is too small; use 16 or more (e.g. 32) in params/")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"synthetic seed={seed!r} must be a non-negative integer; fix it in params/")
    if not (0.0 < float(test_fraction) < 1.0):
        raise UserError(f"synthetic test_fraction={test_fraction} must be strictly between 0 and 1; fix it in params/")


def generate_domain(
    domain: str,
    n_images: int,
    image_size: int = 32,
    seed: int = 0,
    test_fraction: float = 0.25,
    masks: bool = False,
) -> tuple:
    """Render one domain; returns ``(images uint8 (N,H,W,3), labels, meta)`` ready for write_dataset,
    and with ``masks`` also the label maps uint8 (N,H,W,len(MASK_LEVELS)) (then meta describes them)."""
    _validate(domain, n_images, image_size, seed, test_fraction)
    n_images, image_size, seed = int(n_images), int(image_size), int(seed)
    n_chunks = (n_images + CHUNK - 1) // CHUNK
    ss = domain_seed(seed, domain)
    children = ss.spawn(1 + n_chunks)
    rng = np.random.default_rng(children[0])

    fine, is_test = _labels(rng, n_images, test_fraction)
    params = _draw_params(rng, domain, n_images)

    images = np.empty((n_images, image_size, image_size, 3), dtype=np.uint8)
    maps = np.empty((n_images, image_size, image_size, len(MASK_LEVELS)), dtype=np.uint8)
    for k in range(n_chunks):
        lo, hi = k * CHUNK, min((k + 1) * CHUNK, n_images)
        chunk_rng = np.random.default_rng(children[1 + k])
        sub = {name: arr[lo:hi] for name, arr in params.items()}
        images[lo:hi], maps[lo:hi] = _render_chunk(chunk_rng, domain, fine[lo:hi], sub, image_size)

    mid = fine // len(CYCLES)
    labels = pd.DataFrame(
        {
            "index": np.arange(n_images, dtype=np.int64),
            "split": np.where(is_test, "test", "train"),
            "domain": domain,
            "coarse": mid // len(PATTERNS),
            "mid": mid,
            "fine": fine,
        }
    )
    meta = {
        "name": domain,
        "levels": list(LEVELS),
        "classes": class_names(),
        "parents": class_parents(),
        "image_size": image_size,
        "n_images": n_images,
        "source": {
            "generator": "sslstudy.data.synth",
            "generator_version": GENERATOR_VERSION,
            "domain": domain,
            "seed": seed,
            "n_images": n_images,
            "image_size": image_size,
            "test_fraction": float(test_fraction),
            "class_definitions": {
                "coarse": "object outline",
                "mid": "pattern inside the object",
                "fine": "pattern cycles across the object: " + ", ".join(str(c) for c in CYCLES),
            },
        },
    }
    if not masks:
        return images, labels, meta
    meta["masks"] = {
        "levels": list(MASK_LEVELS),
        "classes": mask_classes(),
        "size": image_size,
        "ignore": IGNORE,
        "definition": "object where its anti-aliased coverage is >= 1/2; background 0, else 1 + the image's class",
    }
    return images, labels, meta, maps


def generate(
    out_root: str | os.PathLike,
    domains: Sequence[str] = DOMAINS,
    n_images: int = 4096,
    image_size: int = 32,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> list[Path]:
    """Write ``out_root/<domain>/`` for every domain (always regenerated); returns the folders."""
    if isinstance(domains, str):
        domains = [domains]
    domains = list(domains)
    if not domains:
        raise UserError("no synthetic domains requested; list at least one of " + ", ".join(DOMAINS))
    for d in domains:  # fail before writing anything
        _validate(d, n_images, image_size, seed, test_fraction)
    out_root = Path(out_root)
    paths = []
    for d in domains:
        images, labels, meta, masks = generate_domain(d, n_images, image_size, seed, test_fraction, masks=True)
        path = out_root / d
        write_dataset(path, images, labels, meta, masks)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- contact sheets


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as a PNG (Pillow; atomic)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def contact_sheet(
    images: np.ndarray,
    labels: pd.DataFrame,
    path: str | os.PathLike,
    level: str = "coarse",
    n_per_class: int = 8,
    classes: Iterable[int] | None = None,
    max_classes: int = 16,
    upscale: int = 2,
    seed: int = 0,
) -> Path:
    """Write a PNG grid: one row per class of ``level`` (up to ``max_classes``), ``n_per_class``
    random examples per row (seeded), ``upscale``-times nearest-neighbour enlarged, 2 px white gutters.

    ``labels`` must have one row per image (row i describes images[i]) and a ``level`` column.
    """
    if level not in labels.columns:
        raise UserError(
            f"contact sheet: labels have no column {level!r}; use one of {', '.join(map(str, labels.columns))}"
        )
    y = labels[level].to_numpy()
    if classes is None:
        classes = np.unique(y)[:max_classes]
    classes = list(classes)
    rng = np.random.default_rng(seed)
    n, h, w, _ = images.shape
    gap = 2
    hh, ww = h * upscale, w * upscale
    sheet = np.full((len(classes) * (hh + gap) + gap, n_per_class * (ww + gap) + gap, 3), 255, dtype=np.uint8)
    for row, c in enumerate(classes):
        members = np.flatnonzero(y == c)
        if members.size > n_per_class:
            members = np.sort(rng.choice(members, size=n_per_class, replace=False))
        for col_i, idx in enumerate(members):
            tile = np.asarray(images[idx])
            if upscale > 1:
                tile = tile.repeat(upscale, axis=0).repeat(upscale, axis=1)
            y0 = gap + row * (hh + gap)
            x0 = gap + col_i * (ww + gap)
            sheet[y0 : y0 + hh, x0 : x0 + ww] = tile
    path = Path(path)
    write_png(path, sheet)
    return path
