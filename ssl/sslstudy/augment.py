"""Batched SSL view generation: one call turns a whole uint8 batch into augmented, normalised views.

Per-image PIL/torchvision pipelines in dataloader workers are the bottleneck of SSL training on
GPUs. Here the batch tensor is augmented at once, on whatever device it lives on, with random
parameters drawn per sample:

    views = make_views(images_uint8, spec, generator)        # = apply_params(to_float(x), sample_params(...))

Design
------
* ALL randomness is drawn by :func:`sample_params` on the CPU from a CPU ``torch.Generator``; the
  returned dict of small CPU tensors fully determines the views. A CPU and a CUDA run with the same
  seed therefore draw identical parameters, and :func:`apply_params` never needs a device->host
  sync: which samples take part in an op is known on the host, so subsets are formed with
  ``index_select``/``index_copy_`` on host-computed indices (no ``.item()``, no ``nonzero`` on the
  device). Samples not selected for an op are never touched, so they are bit-identical to skipping it.
* Random resized crop + horizontal flip + resize are ONE ``F.affine_grid``/``F.grid_sample``
  (bilinear, ``align_corners=False``, border padding) with a per-sample theta. The crop box
  ``(top, left, height, width)`` is sampled with torchvision's RandomResizedCrop algorithm (area in
  ``scale*H*W``, log-uniform aspect ratio, 10 tries, centre-crop fallback clamped to ``ratio``),
  vectorised by drawing all 10 candidates per sample at once and keeping the first valid one. The
  theta maps pixel centres exactly: output pixel ``u`` samples input coordinate
  ``left + (u + 0.5) * width / size - 0.5``, as ``torch.nn.functional.interpolate`` does on the crop.
  Two documented differences from ``torchvision.transforms.v2.RandomResizedCrop``: no antialiasing
  when a crop is shrunk (plain bilinear), and at the crop's edge the true neighbouring pixel of the
  full image is blended in where torchvision replicates the crop's edge pixel.
* Colour jitter (brightness, contrast, saturation, hue; torchvision's factor ranges and formulas,
  clamping to [0, 1] after every op) is applied to a random subset (``jitter_p``) in a
  **per-sample random order**: each sample gets its own uniformly random permutation of the four
  ops (as torchvision's per-image ``ColorJitter`` does). It is done in four stages; at stage ``k``
  the samples are grouped by the op at position ``k`` of their permutation and each op runs once on
  its group, so every op still touches every jittered sample exactly once -- the same arithmetic as
  a per-batch order, plus gathers/scatters of the groups and about four times as many (smaller)
  kernels. On one CPU thread that costs about as much as a per-batch order (the smaller groups
  stay in cache); with several threads, and more so on a loaded machine, the many small kernels
  wait at OpenMP barriers; on a GPU each is a kernel launch. The timings are in
  docs/performance.md ("Measurements behind code comments"; ``benchmarks/bench_augment.py``
  prints them). We keep the per-sample order for per-image-faithful statistics. A per-batch order
  is obtained by giving every row of ``params["order"]`` the same permutation; :func:`apply_params`
  then runs each stage as one op on the whole subset, with no extra gathers.
  Hue is shifted with a batched RGB -> (hue, chroma, max) -> RGB conversion equivalent to
  torchvision's RGB -> HSV -> RGB round trip.
* Grayscale uses the ITU-R 601-2 luma weights 0.299/0.587/0.114 (torchvision uses 0.2989 for red).
* Gaussian blur (SimCLR: kernel ``size // 10`` made odd, at least 3; sigma uniform in
  ``blur_sigma``, in pixels of the output view) is a separable depthwise convolution whose
  per-sample kernels go through ``groups`` (the ``B x 3`` channels reshaped into one image), with
  reflect padding, like ``torchvision.transforms.v2.functional.gaussian_blur``.
* Solarize (BYOL): ``x -> 1 - x`` where ``x >= 0.5``.
* Order of the pipeline (SimCLR/BYOL): crop+flip, colour jitter, grayscale, blur, solarize,
  normalise. Computation is in float32. No Python loop over samples anywhere; on the CPU only,
  large batches go through the pipeline in blocks of samples (see ``CPU_BLOCK_BYTES``).

Multi-crop: call :func:`make_views` once per crop with a different :class:`ViewSpec`.
"""

from __future__ import annotations

import ctypes
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserError

__all__ = [
    "MEAN",
    "STD",
    "ViewSpec",
    "to_float",
    "normalize",
    "gray_normalized",
    "sample_params",
    "apply_params",
    "batch_params",
    "views_from",
    "make_views",
    "eval_view",
    "set_calling_thread_torch_threads",
]

#: ImageNet channel statistics used to normalise views (RGB, for images in [0, 1]).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

#: ITU-R 601-2 luma weights (R, G, B).
LUMA = (0.299, 0.587, 0.114)

#: RandomResizedCrop tries per sample before falling back to a centre crop (torchvision's value).
CROP_TRIES = 10

#: Solarize threshold on [0, 1] images (BYOL).
SOLARIZE_THRESHOLD = 0.5


@dataclass(frozen=True)
class ViewSpec:
    """How one view is made. Lists (from YAML) are accepted for the tuple fields."""

    size: int = 32  # output side in pixels
    scale: tuple = (0.08, 1.0)  # random resized crop area fraction
    ratio: tuple = (3 / 4, 4 / 3)  # crop aspect ratio w/h, sampled log-uniformly
    hflip: float = 0.5  # probability of a horizontal flip
    jitter: tuple = (
        0.4,
        0.4,
        0.4,
        0.1,
    )  # brightness, contrast, saturation, hue (SimCLR s=0.5; ImageNet s=1: 0.8,0.8,0.8,0.2)
    jitter_p: float = 0.8  # probability of colour jitter
    gray_p: float = 0.2  # probability of grayscale
    blur_p: float = 0.5  # probability of Gaussian blur
    blur_sigma: tuple = (0.1, 2.0)  # sigma in output pixels; kernel = size // 10 made odd (min 3), as SimCLR
    solarize_p: float = 0.0  # probability of solarize (BYOL's second view: 0.2); threshold 0.5

    def __post_init__(self):
        def fail(name, what):
            raise UserError(f"ViewSpec.{name} {what}, got {getattr(self, name)!r}")

        def number(v, name, what):
            try:
                return float(v)
            except (TypeError, ValueError):
                fail(name, what)

        for name, n in (("scale", 2), ("ratio", 2), ("jitter", 4), ("blur_sigma", 2)):
            v = getattr(self, name)
            if isinstance(v, str) or not hasattr(v, "__len__") or len(v) != n:
                fail(name, f"must be a list of {n} numbers")
            object.__setattr__(self, name, tuple(number(a, name, f"must be a list of {n} numbers") for a in v))
        size = number(self.size, "size", "must be an integer >= 2")
        if isinstance(self.size, bool) or size != int(size) or size < 2:
            fail("size", "must be an integer >= 2")
        object.__setattr__(self, "size", int(size))
        for name in ("hflip", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            p = number(getattr(self, name), name, "must be a probability in [0, 1]")
            if not 0.0 <= p <= 1.0:
                fail(name, "must be a probability in [0, 1]")
            object.__setattr__(self, name, p)
        for name in ("scale", "ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                fail(name, "must satisfy 0 < min <= max")
        b, c, s, h = self.jitter
        if min(b, c, s) < 0 or not 0.0 <= h <= 0.5:
            fail("jitter", "needs brightness, contrast, saturation >= 0 and hue in [0, 0.5]")

    @property
    def blur_kernel(self) -> int:
        """SimCLR's blur kernel side: 10% of the view side, made odd, at least 3."""
        k = self.size // 10
        k += 1 - k % 2
        return max(k, 3)


# ------------------------------------------------------------------------------------------------
# conversion, normalisation


def _chw(images: Tensor) -> Tensor:
    """Validate a 4-D image batch and view it as (B, 3, H, W) (no copy)."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(
            f"expected a (B, H, W, 3) or (B, 3, H, W) tensor, got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images)}"
        )
    if images.shape[1] == 3:
        x = images
    elif images.shape[-1] == 3:
        x = images.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected 3 channels first or last, got shape {tuple(images.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"expected uint8 (or float in [0, 1]) images, got {x.dtype}")
    return x


def to_float(images: Tensor) -> Tensor:
    """(B, H, W, 3) or (B, 3, H, W) uint8 -> (B, 3, H, W) float32 in [0, 1].

    Channels-last input stays channels-last in memory (the permuted view is converted; no extra
    copy to NCHW): that is what ``(B, H, W, 3)`` storage gives for free, and an NCHW copy before
    ``grid_sample`` made no measurable difference to make_views on CPU (within +-10%, 32 and
    224 px). If the second dimension is 3 the input is read as (B, 3, H, W). Float input is taken
    to be in [0, 1] already and only cast to float32.
    """
    x = _chw(images)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1).to(x.device, non_blocking=True)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1).to(x.device, non_blocking=True)
    return mean, std


def normalize(x: Tensor) -> Tensor:
    """(x - MEAN) / STD per channel of a (B, 3, H, W) float tensor in [0, 1] (not in place)."""
    mean, std = _stats(x)
    return (x - mean) / std


def gray_normalized(x: Tensor) -> Tensor:
    """Normalised (B, 3, H, W) images -> the same images in grey (their luma on all three
    channels), normalised again: what a view's grayscale makes of them."""
    mean, std = _stats(x)
    return normalize(_grayscale(x * std + mean))


def _normalize_(x: Tensor) -> Tensor:
    mean, std = _stats(x)
    return x.sub_(mean).div_(std)


# ------------------------------------------------------------------------------------------------
# parameters


def _crop_boxes(spec: ViewSpec, b: int, height: int, width: int, g: torch.Generator) -> Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised: (b, 4) int64 (top, left, h, w)."""
    area = float(height * width)
    s0, s1 = spec.scale
    lr0, lr1 = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    u_area = torch.rand(b, CROP_TRIES, generator=g, dtype=torch.float64)
    u_ratio = torch.rand(b, CROP_TRIES, generator=g, dtype=torch.float64)
    u_top = torch.rand(b, generator=g, dtype=torch.float64)
    u_left = torch.rand(b, generator=g, dtype=torch.float64)

    target = area * (s0 + (s1 - s0) * u_area)
    aspect = torch.exp(lr0 + (lr1 - lr0) * u_ratio)
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, like Python's round()
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first valid try
    found = valid.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # fallback: central crop, clamped to the ratio range
    in_ratio = width / height
    if in_ratio < spec.ratio[0]:
        fw, fh = width, int(round(width / spec.ratio[0]))
    elif in_ratio > spec.ratio[1]:
        fw, fh = int(round(height * spec.ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, float(fw))
    h = torch.where(found, h, float(fh))
    top = torch.where(found, torch.floor(u_top * (height - h + 1)), float((height - fh) // 2))
    left = torch.where(found, torch.floor(u_left * (width - w + 1)), float((width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def sample_params(spec: ViewSpec, batch: int, height: int, width: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Draw every random choice for ``batch`` views of ``height x width`` images, on the CPU.

    Returns CPU tensors (B = batch):

    ``box``       (B, 4) int64   crop top, left, height, width in input pixels (torchvision's i, j, h, w)
    ``flip``      (B,) bool      horizontal flip
    ``jitter``    (B,) bool      colour jitter applied
    ``factors``   (B, 4) float32 brightness, contrast, saturation factors and hue shift
    ``order``     (B, 4) int64   per-sample permutation of the jitter ops (0 brightness .. 3 hue)
    ``gray``      (B,) bool      grayscale
    ``blur``      (B,) bool      Gaussian blur
    ``sigma``     (B,) float32   blur sigma in output pixels
    ``solarize``  (B,) bool      solarize
    ``image_hw``  (2,) int64     (height, width) the boxes were drawn for

    The number of draws depends only on ``batch``, not on the spec's probabilities.
    """
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError("sample_params needs a CPU torch.Generator (so CPU and GPU runs draw the same)")
    if height < 1 or width < 1 or batch < 0:
        raise ValueError(f"bad batch/image size: batch={batch}, height={height}, width={width}")
    g, b = generator, batch

    def coin(p: float) -> Tensor:
        return torch.rand(b, generator=g) < p

    box = _crop_boxes(spec, b, height, width, g)
    flip = coin(spec.hflip)

    jitter = coin(spec.jitter_p)
    u = torch.rand(b, 4, generator=g, dtype=torch.float64)
    bri, con, sat, hue = spec.jitter
    lo = torch.tensor([max(0.0, 1 - bri), max(0.0, 1 - con), max(0.0, 1 - sat), -hue], dtype=torch.float64)
    hi = torch.tensor([1 + bri, 1 + con, 1 + sat, hue], dtype=torch.float64)
    factors = (lo + (hi - lo) * u).to(torch.float32)
    order = torch.rand(b, 4, generator=g).argsort(dim=1)

    gray = coin(spec.gray_p)
    blur = coin(spec.blur_p)
    s0, s1 = spec.blur_sigma
    sigma = (s0 + (s1 - s0) * torch.rand(b, generator=g, dtype=torch.float64)).to(torch.float32)
    solarize = coin(spec.solarize_p)
    return dict(
        box=box,
        flip=flip,
        jitter=jitter,
        factors=factors,
        order=order,
        gray=gray,
        blur=blur,
        sigma=sigma,
        solarize=solarize,
        image_hw=torch.tensor([height, width], dtype=torch.int64),
    )


# ------------------------------------------------------------------------------------------------
# ops on (n, 3, H, W) float tensors in [0, 1]; per-sample arguments are (n,) tensors on x's device.
# The in-place ones (trailing _) only ever see tensors owned by apply_params.


def _gray(x: Tensor) -> Tensor:
    """(n, 3, H, W) -> (n, 1, H, W) luma."""
    r, g, b = x.unbind(dim=1)
    return torch.add(r * LUMA[0], g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def _col(f: Tensor) -> Tensor:
    return f.view(-1, 1, 1, 1)


def _brightness_(x: Tensor, f: Tensor) -> Tensor:
    return x.mul_(_col(f)).clamp_(0.0, 1.0)


def _contrast_(x: Tensor, f: Tensor) -> Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _col(f)
    return x.mul_(f).add_((1.0 - f) * mean).clamp_(0.0, 1.0)


def _saturation_(x: Tensor, f: Tensor) -> Tensor:
    gray, f = _gray(x), _col(f)
    return x.mul_(f).addcmul_(gray, 1.0 - f).clamp_(0.0, 1.0)


def _hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by ``shift`` turns (in [-0.5, 0.5]): the same map as torchvision's RGB -> HSV,
    ``h = (h + shift) mod 1``, HSV -> RGB. Written with max, min, chroma C = max - min and the hue
    in sextants ``h6 = 6 h`` in [0, 6): the rotated pixel is ``min + C * pure(h6)``, where ``pure``
    is the fully saturated colour of that hue, ``R = clamp(|h6 - 3| - 1, 0, 1)``,
    ``G = clamp(2 - |h6 - 2|, 0, 1)``, ``B = clamp(2 - |h6 - 4|, 0, 1)`` (so the result lies in
    [min, max] of the input pixel). Only elementwise ops on (n, 1, H, W) planes, few comparisons
    and selects: on the CPU a reduction over the 3 channels, ``torch.remainder`` and
    ``torch.where`` cost several times an add."""
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    safe = chroma.clamp_min(torch.finfo(x.dtype).tiny)  # chroma 0: the numerators are 0 too
    s6 = (6.0 * shift).view(-1, 1, 1)
    h_r = (g - b).div_(safe).add_(s6)  # max is r (torchvision's tie order:
    h_g = (b - r).div_(safe).add_(s6 + 2.0)  # r, then g, then b)
    h_b = (r - g).div_(safe).add_(s6 + 4.0)
    h6 = torch.where(r == maxc, h_r, torch.where(g == maxc, h_g, h_b))
    h6 = h6.sub_(torch.floor(h6 * (1.0 / 6.0)), alpha=6.0)  # mod 6 (in [-4, 8) before)
    out = torch.empty_like(x)
    pure = (h6 - 3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    torch.addcmul(minc, chroma, pure, out=out[:, 0])
    for c, centre in ((1, 2.0), (2, 4.0)):
        pure = torch.rsub((h6 - centre).abs_(), 2.0).clamp_(0.0, 1.0)
        torch.addcmul(minc, chroma, pure, out=out[:, c])
    return out


_JITTER_OPS = (_brightness_, _contrast_, _saturation_, _hue)


def _grayscale(x: Tensor) -> Tensor:
    return _gray(x).expand(-1, 3, -1, -1).contiguous()


def _blur(x: Tensor, kernels: Tensor) -> Tensor:
    """Separable Gaussian blur with per-sample 1-D kernels (n, K), reflect padding: two depthwise
    convolutions over the ``n x 3`` channels of one image. On the CPU the padded image is made
    channels-last first: oneDNN's depthwise kernels run faster so, with the same numbers
    (docs/performance.md)."""
    n, c, h, w = x.shape
    k = kernels.shape[1]
    pad = k // 2
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)  # (n*c, K)
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    if y.device.type == "cpu":
        y = y.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(y, weight.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(y, weight.view(n * c, 1, k, 1), groups=n * c)
    return y.reshape(n, c, h, w)


def _solarize(x: Tensor) -> Tensor:
    return torch.where(x >= SOLARIZE_THRESHOLD, 1.0 - x, x)


def _gaussian_kernels(sigma: Tensor, k: int) -> Tensor:
    """(n,) sigmas -> (n, k) normalised 1-D Gaussian kernels (float64, CPU)."""
    t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    logits = -(t**2) / (2.0 * sigma.to(torch.float64).unsqueeze(1) ** 2)
    return torch.softmax(logits, dim=1)


#: Outer blur taps that carry less than this weight on each side, for every sample blurred together,
#: are dropped: the result moves by < 2^-24 per pass (below float32 rounding of values <= 1), and a
#: small sigma then costs a short kernel (at 224 px the kernel has 23 taps, sigma <= 2 px needs <= 23).
TAIL_MASS = 2.0**-25


def _trim_taps(kernels: Tensor, rows: Tensor) -> Tensor:
    """(n, K) symmetric kernels -> (n, K - 2 d), d outer taps per side dropped (see TAIL_MASS), as
    far as the ``rows`` (a CPU bool mask) allow."""
    k = kernels.shape[1]
    if not bool(rows.any()):
        return kernels
    outer = kernels[rows].cumsum(dim=1).amax(dim=0)  # weight of the first j + 1 taps, worst row
    d = min(int((outer < TAIL_MASS).sum()), (k - 1) // 2)
    return kernels[:, d : k - d]


def _on_subset(x: Tensor, select: Tensor, fn, *args: Tensor) -> Tensor:
    """Apply ``fn(x[select], *args[select])`` to the samples a CPU bool mask selects; the others are
    left untouched. ``x`` must be owned by the caller (it is updated in place); returns the result."""
    idx = select.nonzero().flatten()  # host-side: select is a CPU tensor
    n = idx.numel()
    if n == 0:
        return x
    dev = x.device
    args = [a[idx].to(dev, non_blocking=True) for a in args]
    if n == x.shape[0]:
        return fn(x, *args)
    idx_dev = idx.to(dev, non_blocking=True)
    return x.index_copy_(0, idx_dev, fn(x.index_select(0, idx_dev), *args))


def _crop_grid(box: Tensor, flip: Tensor, height: int, width: int, size: int, device) -> Tensor:
    """(B, size, size, 2) grid_sample grid (float32, on ``device``) mapping output pixel centres onto
    the crop boxes: output column ``u`` samples input x ``left + (u + 0.5) * w / size - 0.5`` (mirrored
    if flipped), row ``v`` input y ``top + (v + 0.5) * h / size - 0.5``, in normalised coordinates
    (align_corners=False). The crop is axis-aligned, so x depends only on the column and y only on
    the row: both are computed per sample in float64 on the CPU and broadcast on the device (what
    ``F.affine_grid`` gives for a diagonal theta, without its (B, size*size, 3) x (3, 2) product)."""
    top, left, h, w = box.to(torch.float64).unbind(dim=1)
    u = torch.arange(size, dtype=torch.float64) + 0.5  # pixel centres
    gx = (2.0 * left[:, None] + u * (2.0 * w / size)[:, None]) / width - 1.0  # (B, size)
    gx = torch.where(flip[:, None], gx.flip(1), gx)
    gy = (2.0 * top[:, None] + u * (2.0 * h / size)[:, None]) / height - 1.0
    gx = gx.to(torch.float32).to(device, non_blocking=True)
    gy = gy.to(torch.float32).to(device, non_blocking=True)
    b = box.shape[0]
    return torch.stack((gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)), dim=-1)


def _jitter(x: Tensor, params: dict[str, Tensor], spec: ViewSpec) -> Tensor:
    active = [op for op, strength in enumerate(spec.jitter) if strength > 0]
    sel = params["jitter"]
    if not active or not bool(sel.any()):
        return x
    idx = sel.nonzero().flatten()
    order = params["order"][idx]
    factors = params["factors"][idx]
    dev = x.device
    whole = idx.numel() == x.shape[0]
    if whole:
        sub = x
    else:
        idx_dev = idx.to(dev, non_blocking=True)
        sub = x.index_select(0, idx_dev)
    for stage in range(4):
        for op in active:
            sub = _on_subset(sub, order[:, stage] == op, _JITTER_OPS[op], factors[:, op])
    if whole:
        return sub
    return x.index_copy_(0, idx_dev, sub)


#: On the CPU, a batch larger than this (float input + output) is processed in blocks of samples that
#: fit: every temporary then stays below glibc's mmap threshold (32 MiB), so it is not page-faulted
#: in afresh on every call, and a block stays cache-friendly (faster: docs/performance.md). Each
#: block holds samples of one group (see :func:`_cpu_blocks`).
#: CUDA batches are never split (its caching allocator has no such cost, and fewer, larger kernels
#: are better there).
CPU_BLOCK_BYTES = 24 * 2**20

#: A smaller CPU batch is split into one contiguous part per torch thread when each part has at least
#: this many bytes; below that one thread does it all.
CPU_MIN_PART_BYTES = 2**20


def _sample_bytes(height: int, width: int, size: int) -> int:
    return 3 * 4 * (height * width + size * size)


def _block(device: torch.device, batch: int, height: int, width: int, size: int) -> int:
    if device.type != "cpu":
        return batch
    return max(1, CPU_BLOCK_BYTES // _sample_bytes(height, width, size))


def _check(x: Tensor, params: dict[str, Tensor]) -> None:
    b, _, height, width = x.shape
    hw = tuple(int(v) for v in params["image_hw"])
    if hw != (height, width) or params["box"].shape[0] != b:
        raise ValueError(f"params were drawn for {params['box'].shape[0]} images of {hw}, got {b} of {(height, width)}")


def _views(x01: Tensor, params: dict[str, Tensor], spec: ViewSpec) -> Tensor:
    """The whole pipeline on one block: (n, 3, H, W) float32 -> (n, 3, size, size) normalised."""
    b, _, height, width = x01.shape
    dev, size = x01.device, spec.size
    grid = _crop_grid(params["box"], params["flip"], height, width, size, dev)
    x = F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)

    x = _jitter(x, params, spec)
    x = _on_subset(x, params["gray"], _grayscale)
    kernels = _trim_taps(_gaussian_kernels(params["sigma"], spec.blur_kernel), params["blur"])
    x = _on_subset(x, params["blur"], _blur, kernels)
    x = _on_subset(x, params["solarize"], _solarize)
    return _normalize_(x)


def _group_keys(params: dict[str, Tensor], spec: ViewSpec) -> Tensor:
    """(B,) int64: samples with equal keys go through exactly the same sequence of ops (jitter
    on/off and the relative order of its active ops, grayscale, blur, solarize)."""
    active = [op for op, strength in enumerate(spec.jitter) if strength > 0]
    pos = params["order"].argsort(dim=1)  # position of each op in the sample's order
    code = torch.zeros_like(params["jitter"], dtype=torch.int64)
    for a_i, a in enumerate(active):  # the order of the active ops: one bit per pair
        for b in active[a_i + 1 :]:
            code = code * 2 + (pos[:, a] < pos[:, b]).to(torch.int64)
    key = torch.where(params["jitter"], code + 1, 0) if active else code
    for flag in GROUP_FLAGS:
        key = key * 2 + params[flag].to(torch.int64)
    return key


#: Per-sample flags that also split the CPU blocks into groups (see :func:`_cpu_blocks`).
GROUP_FLAGS = ("gray", "blur", "solarize")


def _cpu_blocks(params: dict[str, Tensor], spec: ViewSpec, block: int) -> list[Tensor]:
    """Index tensors of at most ``block`` samples that share one group key each (so within a
    block every op applies to all samples or to none: no gathers/scatters of subsets)."""
    by_sigma = params["sigma"].argsort(stable=True)  # similar sigmas blur together (_trim_taps)
    key, perm = _group_keys(params, spec)[by_sigma].sort(stable=True)
    perm = by_sigma[perm]
    bounds = (torch.nonzero(key[1:] != key[:-1]).flatten() + 1).tolist()
    out = []
    for start, stop in zip([0] + bounds, bounds + [key.numel()]):
        out.extend(perm[start:stop].split(block))
    return out


def _take(params: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    return {k: (v if k == "image_hw" else v[idx]) for k, v in params.items()}


def _cpu_parts(
    params: dict[str, Tensor], spec: ViewSpec, b: int, height: int, width: int, threads: int
) -> list[Tensor]:
    """How a CPU batch is cut: index tensors of the samples processed together."""
    block = _block(torch.device("cpu"), b, height, width, spec.size)
    if block < b:
        return _cpu_blocks(params, spec, block)
    n = min(threads, b * _sample_bytes(height, width, spec.size) // CPU_MIN_PART_BYTES)
    return list(torch.arange(b).chunk(max(1, n)))


def _blocked(images: Tensor, params: dict[str, Tensor], spec: ViewSpec, convert) -> Tensor:
    b, _, height, width = images.shape
    threads = torch.get_num_threads()
    parts = _cpu_parts(params, spec, b, height, width, threads) if images.device.type == "cpu" else []
    if len(parts) <= 1:
        return _views(convert(images), params, spec)
    out = torch.empty(b, 3, spec.size, spec.size, dtype=torch.float32, device=images.device)

    def run(idx: Tensor) -> None:  # rows of different parts are disjoint
        out.index_copy_(0, idx, _views(convert(images[idx]), _take(params, idx), spec))

    workers = min(threads, len(parts))
    if workers <= 1:
        for idx in parts:
            run(idx)
        return out
    # Parts run single-threaded, one per worker thread (torch releases the GIL inside its kernels),
    # instead of every small kernel split across the threads: no OpenMP barrier per op. On a loaded
    # machine those barriers stalled whenever one thread was descheduled (docs/performance.md).
    for f in [_pool(workers).submit(run, idx) for idx in parts]:
        f.result()
    return out


def set_calling_thread_torch_threads(n: int = 1) -> None:
    """Make the calling thread's torch ops use ``n`` threads and leave every other thread as it is.
    (``torch.set_num_threads`` is partly process-wide: it also sets the count that new threads start
    with and empties oneDNN's cache of compiled convolutions, which the next step then rebuilds.)"""
    torch.get_num_threads()  # torch's lazy per-thread set-up first: it would undo the line below
    try:
        ctypes.CDLL(None).omp_set_num_threads(int(n))
    except AttributeError:  # not an OpenMP build of torch: its thread pool is shared, leave it
        pass


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process's pool of ``workers`` single-threaded workers for :func:`_blocked`, made once."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(
                workers, thread_name_prefix="sslstudy-views", initializer=set_calling_thread_torch_threads
            )
        return _POOLS[workers]


def apply_params(x01: Tensor, params: dict[str, Tensor], spec: ViewSpec) -> Tensor:
    """Make the views that ``params`` (from :func:`sample_params`) describe.

    ``x01``: (B, 3, H, W) float images in [0, 1] on any device (not modified). Returns
    (B, 3, spec.size, spec.size) float32 normalised views on the same device. All per-sample
    decisions are read from the CPU ``params``, so there is no device -> host synchronisation.
    """
    if x01.ndim != 4 or x01.shape[1] != 3 or not x01.is_floating_point():
        raise ValueError(f"expected (B, 3, H, W) float images in [0, 1], got {tuple(x01.shape)} {x01.dtype}")
    _check(x01, params)
    if x01.shape[0] == 0:
        return torch.empty(0, 3, spec.size, spec.size, dtype=torch.float32, device=x01.device)
    return _blocked(x01, params, spec, lambda x: x.to(torch.float32))


def batch_params(
    spec: ViewSpec, height: int, width: int, generator: torch.Generator, batch: int, rows: slice | None = None
) -> dict[str, Tensor]:
    """:func:`sample_params` for a global ``batch`` of ``height x width`` images, cut to ``rows``
    (a data-parallel rank's slice; None: all). What :func:`make_views` draws, without the images,
    so the next batch's parameters can be drawn before its images are read."""
    params = sample_params(spec, batch, height, width, generator)
    if rows is not None:
        params = {k: v if k == "image_hw" else v[rows] for k, v in params.items()}
    return params


def views_from(images: Tensor, params: dict[str, Tensor], spec: ViewSpec) -> Tensor:
    """The views that ``params`` (from :func:`batch_params`) describe, of a uint8 batch; no random numbers."""
    chw = _chw(images)
    if chw.shape[0] == 0:
        return torch.empty(0, 3, spec.size, spec.size, dtype=torch.float32, device=chw.device)
    _check(chw, params)
    return _blocked(chw, params, spec, to_float)  # converts block by block on the CPU


def make_views(
    images: Tensor, spec: ViewSpec, generator: torch.Generator, rows: slice | None = None, batch: int | None = None
) -> Tensor:
    """Augmented, normalised (B, 3, spec.size, spec.size) float32 views of a uint8 batch.

    ``images``: (B, H, W, 3) or (B, 3, H, W) uint8 on any device; ``generator``: a CPU
    ``torch.Generator`` (parameters are drawn on the CPU, so CPU and GPU runs agree).
    Same result as ``apply_params(to_float(images), sample_params(...), spec)``.
    Data-parallel ranks pass their ``rows`` of a global ``batch``: parameters are drawn for the
    whole global batch (every rank draws the same) and ``images`` holds only those rows.
    """
    b, _, h, w = _chw(images).shape
    return views_from(images, batch_params(spec, h, w, generator, b if batch is None else batch, rows), spec)


def eval_view(images: Tensor, size: int) -> Tensor:
    """Deterministic evaluation view: to float, resize to ``size x size`` if needed (bilinear,
    antialiased; the aspect ratio is not preserved), normalise."""
    x = to_float(images)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return _normalize_(x.clamp_(0.0, 1.0))
    return normalize(x)
