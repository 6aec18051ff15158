"""sslstudy.augment: an independent per-image check against torchvision.transforms.v2.functional,
determinism, statistics of the drawn parameters, shapes and normalisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from sslstudy.augment import (
    MEAN,
    STD,
    ViewSpec,
    apply_params,
    eval_view,
    make_views,
    normalize,
    sample_params,
    to_float,
)
from sslstudy.errors import UserError
from torchvision.transforms import RandomResizedCrop  # v1's get_params: the reference algorithm

# ---- tolerances of the torchvision comparison (images in [0, 1]) -------------------------------
# float32 rounding of a handful of ops on values <= 1 (ulp 6e-8), including the <= ~3e-6 that the
# identity crop leaves on noise images (grid_sample on pixel centres up to float32 coordinate rounding):
FLOAT_ATOL = 1e-5
# torchvision's grayscale uses 0.2989 for red, ITU-R 601-2 (ours) 0.299: |delta gray| <= 1e-4 * R <= 1e-4.
GRAY_WEIGHT_DELTA = 0.299 - 0.2989
# the contrast mean / saturation gray enter with weight |1 - f| <= 1, so each differs by at most that:
GRAY_OP_ATOL = GRAY_WEIGHT_DELTA + FLOAT_ATOL
# hue: two formulations of RGB -> HSV -> RGB; they agree to a few ulp (measured ~2e-6):
HUE_ATOL = 1e-5
# full jitter chain at s=0.5: the two gray-using ops each add <= 0.4e-4 (|1 - f| <= 0.4), and each later op
# is Lipschitz with constant <= |f| + |1 - f| <= 1.8 (hue ~ similar), so <= 0.4e-4 * (1.8^3 + 1.8^2) ~ 3.6e-4:
CHAIN_ATOL = 4e-4
# crop: where both methods read the same four input pixels the only difference is float32 rounding of
# the sampling coordinates (float32 normalised coordinates: <~1e-5 px at 56 px) times the local slope
# (<~0.1 per px on these smooth images), measured 7e-7:
CROP_INTERIOR_ATOL = 1e-5
# crop, whole image: at the crop's edge torchvision (crop, then resize) replicates the crop's edge pixel
# while the affine grid blends in the true neighbour; on these smooth images the mean is ~1e-3 (a half-pixel
# shift of the grid would give ~1e-2):
CROP_MEAN_ATOL = 5e-3

_M = torch.tensor(MEAN).view(1, 3, 1, 1)
_S = torch.tensor(STD).view(1, 3, 1, 1)


def unnorm(v: torch.Tensor) -> torch.Tensor:
    return v.cpu() * _S + _M


def no_aug(**kw) -> ViewSpec:
    """A spec with every random op off unless switched on in kw."""
    base = dict(hflip=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)
    base.update(kw)
    return ViewSpec(**base)


def identity_crop(size: int, **kw) -> ViewSpec:
    return no_aug(size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0), **kw)


def drawn_for_some(x: torch.Tensor, spec: ViewSpec, op: str, seed: int) -> tuple[dict, torch.Tensor]:
    """spec's parameters for the images x (b, 3, h, w) drawn from seed, with the op `op` on some
    images but not all -> (the parameters, our views of x unnormalised)."""
    b, _, h, w = x.shape
    p = sample_params(spec, b, h, w, torch.Generator().manual_seed(seed))
    assert 0 < int(p[op].sum()) < b
    return p, unnorm(apply_params(x, p, spec))


def noise_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(b, h, w, 3) uint8 noise with gray pixels, saturated colours, black and white in it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)
    x[:, :2, :, :] = x[:, :2, :, :1]  # gray rows (chroma 0)
    x[:, 2, :, :] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    x[:, 3, :, :] = torch.tensor([0, 255, 255], dtype=torch.uint8)
    x[:, 4, :4, :] = 0
    x[:, 4, 4:8, :] = 255
    return x


def smooth_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(b, 3, h, w) float in [0, 1]: random 6x6 colour fields upsampled -- gentle slopes."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 6, 6, generator=g)
    return F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


# ---- spec --------------------------------------------------------------------------------------


def test_spec_coerces_lists_and_rejects_bad_values():
    s = ViewSpec(scale=[0.2, 1], ratio=[0.75, 1.3333], jitter=[0.8, 0.8, 0.8, 0.2], blur_sigma=[0.1, 2])
    assert s.scale == (0.2, 1.0) and s.jitter == (0.8, 0.8, 0.8, 0.2)
    hash(s)
    for bad in (
        dict(scale=(0.5, 0.1)),
        dict(scale=(0, 1)),
        dict(ratio=(2, 1)),
        dict(hflip=1.5),
        dict(jitter=(0.4, 0.4, 0.4, 0.6)),
        dict(jitter=(0.4, 0.4)),
        dict(size=1),
        dict(blur_sigma=(0.0, 1.0)),
        dict(gray_p=-0.1),
    ):
        with pytest.raises(UserError):
            ViewSpec(**bad)


@pytest.mark.parametrize("size,kernel", [(16, 3), (32, 3), (64, 7), (96, 9), (224, 23)])
def test_blur_kernel_is_simclr_10_percent_made_odd(size, kernel):
    assert ViewSpec(size=size).blur_kernel == kernel


# ---- shapes, normalisation, identity -----------------------------------------------------------


def test_to_float_layouts_and_range():
    hwc = noise_images(3, 9, 11)
    chw = hwc.permute(0, 3, 1, 2).contiguous()
    a, b = to_float(hwc), to_float(chw)
    assert a.shape == b.shape == (3, 3, 9, 11) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert a.min() == 0 and a.max() == 1
    assert torch.equal(a, chw.double().div(255).float())
    with pytest.raises(ValueError):
        to_float(torch.zeros(2, 5, 5, 4, dtype=torch.uint8))


def test_normalize_constants():
    x = torch.rand(2, 3, 4, 5)
    y = normalize(x)
    ref = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)


def test_make_views_shape_dtype_range_and_input_untouched():
    imgs = noise_images(16, 40, 48)
    before = imgs.clone()
    g = torch.Generator().manual_seed(0)
    for spec in (ViewSpec(size=32), ViewSpec(size=16, scale=(0.05, 0.14), solarize_p=0.5)):
        v = make_views(imgs, spec, g)
        assert v.shape == (16, 3, spec.size, spec.size) and v.dtype == torch.float32
        x = unnorm(v)
        assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6
        assert torch.isfinite(v).all()
    assert torch.equal(imgs, before)
    # channels-first input of the same pixels gives the same views
    chw = imgs.permute(0, 3, 1, 2).contiguous()
    v1 = make_views(imgs, ViewSpec(), torch.Generator().manual_seed(5))
    v2_ = make_views(chw, ViewSpec(), torch.Generator().manual_seed(5))
    torch.testing.assert_close(v1, v2_, atol=1e-6, rtol=0)


def test_identity_crop_returns_input_and_flip_mirrors_it():
    imgs = noise_images(6, 20, 20)
    x = to_float(imgs)
    g = torch.Generator().manual_seed(1)
    p = sample_params(identity_crop(20), 6, 20, 20, g)
    assert (p["box"] == torch.tensor([0, 0, 20, 20])).all()
    y = unnorm(apply_params(x, p, identity_crop(20)))
    assert (y - x).abs().max() < FLOAT_ATOL
    p = sample_params(identity_crop(20, hflip=1.0), 6, 20, 20, g)
    y = unnorm(apply_params(x, p, identity_crop(20, hflip=1.0)))
    assert p["flip"].all()
    assert (y - x.flip(-1)).abs().max() < FLOAT_ATOL


def test_eval_view_matches_torchvision_resize():
    imgs = noise_images(4, 40, 40)
    v = eval_view(imgs, 24)
    assert v.shape == (4, 3, 24, 24)
    ref = TF.resize(to_float(imgs), [24, 24], antialias=True)
    assert (unnorm(v) - ref).abs().max() < FLOAT_ATOL
    same = eval_view(imgs, 40)
    assert torch.equal(same, eval_view(imgs, 40))
    assert (unnorm(same) - to_float(imgs)).abs().max() < FLOAT_ATOL


# ---- independent check against torchvision, op by op ---------------------------------------------


def _interior_mask(box, flip, size):
    """Output pixels whose bilinear taps all lie inside the crop box (both methods agree there)."""
    top, left, h, w = (int(v) for v in box)
    u = torch.arange(size, dtype=torch.float64) + 0.5
    sx = u * w / size - 0.5  # source coordinate relative to the crop
    sy = u * h / size - 0.5
    okx = (sx >= 0) & (sx <= w - 1)
    oky = (sy >= 0) & (sy <= h - 1)
    if flip:
        okx = okx.flip(0)
    return oky[:, None] & okx[None, :]


def test_crop_and_flip_match_torchvision_resized_crop():
    b, h, w, size = 24, 48, 56, 40
    x = smooth_images(b, h, w)
    spec = no_aug(size=size, hflip=0.5)
    p, ours = drawn_for_some(x, spec, "flip", seed=3)
    interior = 0
    for i in range(b):
        top, left, hh, ww = (int(v) for v in p["box"][i])
        ref = TF.resized_crop(x[i], top, left, hh, ww, [size, size], antialias=False)
        if p["flip"][i]:
            ref = TF.horizontal_flip(ref)
        err = (ours[i] - ref).abs()
        assert err.mean() < CROP_MEAN_ATOL, (i, err.mean())
        m = _interior_mask(p["box"][i], bool(p["flip"][i]), size)
        interior += int(m.sum())
        assert err[:, m].max() < CROP_INTERIOR_ATOL, (i, err[:, m].max())
    assert interior > 0.6 * b * size * size  # the strict check covers most pixels


def _ref_jitter(img, factors, order, strengths):
    """torchvision's ColorJitter with given factors and op order (zero-strength ops skipped, as it does)."""
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for op in order.tolist():
        if strengths[op] > 0:
            img = fns[op](img, float(factors[op]))
    return img


@pytest.mark.parametrize(
    "jitter,atol",
    [
        ((0.8, 0.0, 0.0, 0.0), FLOAT_ATOL),
        ((0.0, 0.8, 0.0, 0.0), GRAY_OP_ATOL),
        ((0.0, 0.0, 0.8, 0.0), GRAY_OP_ATOL),
        ((0.0, 0.0, 0.0, 0.5), HUE_ATOL),
        ((0.4, 0.4, 0.4, 0.1), CHAIN_ATOL),
    ],
)
def test_color_jitter_matches_torchvision(jitter, atol):
    b, s = 32, 24
    x = to_float(noise_images(b, s, s))
    spec = identity_crop(s, jitter=jitter, jitter_p=0.75)
    p, ours = drawn_for_some(x, spec, "jitter", seed=4)
    sel = p["jitter"]
    worst = 0.0
    for i in range(b):
        ref = _ref_jitter(x[i], p["factors"][i], p["order"][i], jitter) if sel[i] else x[i]
        worst = max(worst, float((ours[i] - ref).abs().max()))
    assert worst < atol, worst
    if jitter == (0.4, 0.4, 0.4, 0.1):
        # the order matters: applying the ops in a wrong (reversed) order is detectably different
        rev = [_ref_jitter(x[i], p["factors"][i], p["order"][i].flip(0), jitter) for i in range(b) if sel[i]]
        assert max(float((ours[sel][k] - r).abs().max()) for k, r in enumerate(rev)) > 10 * atol


def test_grayscale_matches_torchvision_and_itu_weights():
    b, s = 16, 20
    x = to_float(noise_images(b, s, s))
    spec = identity_crop(s, gray_p=0.5)
    p, ours = drawn_for_some(x, spec, "gray", seed=6)
    luma = (x.double() * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1, keepdim=True)
    for i in range(b):
        if p["gray"][i]:
            ref = TF.rgb_to_grayscale(x[i], num_output_channels=3)
            assert (ours[i] - ref).abs().max() < GRAY_OP_ATOL
            assert (ours[i] - luma[i].float()).abs().max() < FLOAT_ATOL  # the 601-2 weights exactly
        else:
            assert (ours[i] - x[i]).abs().max() < FLOAT_ATOL


@pytest.mark.parametrize("size", [32, 64])
def test_blur_matches_torchvision_gaussian_blur(size):
    b = 16
    x = smooth_images(b, size, size) * 0.5 + to_float(noise_images(b, size, size)) * 0.5
    spec = identity_crop(size, blur_p=0.5)
    p, ours = drawn_for_some(x, spec, "blur", seed=7)
    k = spec.blur_kernel
    for i in range(b):
        if p["blur"][i]:
            sigma = float(p["sigma"][i])
            ref = TF.gaussian_blur(x[i], [k, k], [sigma, sigma])
            assert (ours[i] - ref).abs().max() < FLOAT_ATOL, (i, sigma)
            if sigma > 0.8:
                assert (ours[i] - x[i]).abs().max() > 0.05  # it did blur
        else:
            assert (ours[i] - x[i]).abs().max() < FLOAT_ATOL


def test_solarize_matches_torchvision():
    b, s = 16, 16
    x = to_float(noise_images(b, s, s))
    spec = identity_crop(s, solarize_p=0.5)
    p, ours = drawn_for_some(x, spec, "solarize", seed=8)
    for i in range(b):
        ref = TF.solarize(x[i], 0.5) if p["solarize"][i] else x[i]
        assert (ours[i] - ref).abs().max() < FLOAT_ATOL


@pytest.mark.parametrize(
    "flag,spec_kw",
    [
        ("jitter", dict(jitter_p=0.5, jitter=(0.8, 0.8, 0.8, 0.2))),
        ("gray", dict(gray_p=0.5)),
        ("blur", dict(blur_p=0.5)),
        ("solarize", dict(solarize_p=0.5)),
    ],
)
def test_unselected_samples_are_bit_identical_to_skipping_the_op(flag, spec_kw):
    b = 24
    imgs = noise_images(b, 32, 32)
    spec = no_aug(size=24, hflip=0.5, **spec_kw)
    p = sample_params(spec, b, 32, 32, torch.Generator().manual_seed(9))
    sel = p[flag]
    assert 0 < int(sel.sum()) < b
    off = dict(p, **{flag: torch.zeros_like(sel)})
    x = to_float(imgs)
    on_v, off_v = apply_params(x, p, spec), apply_params(x, off, spec)
    assert torch.equal(on_v[~sel], off_v[~sel])
    assert not torch.equal(on_v[sel], off_v[sel])


# ---- parameters: determinism and statistics ----------------------------------------------------


def test_same_seed_same_views_different_seed_different():
    imgs = noise_images(8, 32, 32)
    spec = ViewSpec(solarize_p=0.2)
    a = make_views(imgs, spec, torch.Generator().manual_seed(11))
    b = make_views(imgs, spec, torch.Generator().manual_seed(11))
    c = make_views(imgs, spec, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # successive calls (multi-crop, next step) continue the stream: different views
    g = torch.Generator().manual_seed(11)
    assert not torch.allclose(make_views(imgs, spec, g), make_views(imgs, spec, g))
    with pytest.raises(ValueError):
        make_views(imgs, spec, None)


def test_params_are_cpu_and_independent_of_image_device():
    p1 = sample_params(ViewSpec(), 64, 32, 32, torch.Generator().manual_seed(13))
    p2 = sample_params(ViewSpec(), 64, 32, 32, torch.Generator().manual_seed(13))
    assert set(p1) == set(p2)
    for k in p1:
        assert p1[k].device.type == "cpu" and torch.equal(p1[k], p2[k])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_match_cpu_views():
    imgs = noise_images(32, 32, 32)
    spec = ViewSpec(solarize_p=0.0)
    g_cpu, g_gpu = torch.Generator().manual_seed(14), torch.Generator().manual_seed(14)
    v_cpu = make_views(imgs, spec, g_cpu)
    v_gpu = make_views(imgs.cuda(), spec, g_gpu)
    assert v_gpu.device.type == "cuda"
    assert (unnorm(v_gpu) - unnorm(v_cpu)).abs().max() < 1e-4
    assert torch.equal(torch.rand(4, generator=g_cpu), torch.rand(4, generator=g_gpu))


def test_parameter_statistics():
    n, h, w = 20000, 512, 512
    spec = ViewSpec()
    p = sample_params(spec, n, h, w, torch.Generator().manual_seed(15))
    # Bernoulli fractions: tolerance ~ 5 standard errors (sqrt(p(1-p)/n) <= 0.0036)
    for key, prob in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("solarize", 0.0)):
        assert abs(p[key].float().mean().item() - prob) < 0.018, key
    top, left, bh, bw = p["box"].unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    # area within scale, log aspect within log(ratio): rounding w, h to integers moves each side by
    # <= 0.5 px of >= ~120 px, i.e. <= 0.4% per side
    area = (bh * bw).double() / (h * w)
    assert area.min() >= 0.08 * (1 - 0.01) and area.max() <= 1.0
    assert area.min() < 0.09 and area.max() > 0.95  # the whole range is used
    logr = torch.log(bw.double() / bh.double())
    assert logr.min() >= math.log(3 / 4) - 0.01 and logr.max() <= math.log(4 / 3) + 0.01
    assert logr.min() < math.log(3 / 4) + 0.02 and logr.max() > math.log(4 / 3) - 0.02
    # colour factors in torchvision's ranges, blur sigma in range, orders are permutations, uniform
    f = p["factors"]
    for j, lo, hi in ((0, 0.6, 1.4), (1, 0.6, 1.4), (2, 0.6, 1.4), (3, -0.1, 0.1)):
        assert f[:, j].min() >= lo and f[:, j].max() <= hi
        assert abs(f[:, j].mean().item() - (lo + hi) / 2) < 0.01
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0
    assert torch.equal(p["order"].sort(1).values, torch.arange(4).expand(n, 4))
    first = torch.bincount(p["order"][:, 0], minlength=4).double() / n
    assert (first - 0.25).abs().max() < 0.02
    assert len(torch.unique(p["order"], dim=0)) == 24


@pytest.mark.parametrize(
    "scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.6, 1.0), (0.4, 2.5))]
)  # many rejected tries, a few % fallbacks
def test_crop_boxes_distributed_like_torchvision_random_resized_crop(scale, ratio):
    """Small images, where integer rounding and retries matter: compare the moments of (top, left, h, w)
    with torchvision's own RandomResizedCrop.get_params (tolerance: 5 standard errors for the means,
    5% for the standard deviations)."""
    h, w, n_ours, n_tv = 32, 40, 20000, 4000
    spec = ViewSpec(scale=scale, ratio=ratio)
    ours = sample_params(spec, n_ours, h, w, torch.Generator().manual_seed(16))["box"].double()
    torch.manual_seed(16)  # torchvision draws from the global generator
    img = torch.zeros(3, h, w)
    tv = torch.tensor(
        [RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n_tv)], dtype=torch.float64
    )
    for j in range(4):
        a, b = ours[:, j], tv[:, j]
        se = math.sqrt(a.var().item() / n_ours + b.var().item() / n_tv)
        assert abs(a.mean().item() - b.mean().item()) < 5 * se + 1e-9, (j, a.mean(), b.mean())
        assert abs(a.std().item() - b.std().item()) < 0.05 * b.std().item() + 1e-9, j


def test_crop_fallback_is_torchvision_centre_crop():
    for ratio, hw in (((2.0, 3.0), (32, 32)), ((0.2, 0.25), (32, 32)), ((1.0, 1.0), (24, 40))):
        h, w = hw
        spec = ViewSpec(scale=(1.0, 1.0), ratio=ratio)
        p = sample_params(spec, 5, h, w, torch.Generator().manual_seed(17))
        expected = RandomResizedCrop.get_params(torch.zeros(3, h, w), [1.0, 1.0], list(ratio))
        assert (p["box"] == torch.tensor(expected)).all(), (ratio, p["box"][0], expected)


def test_cpu_blocking_gives_the_same_views(monkeypatch):
    import sslstudy.augment as aug

    imgs = noise_images(40, 36, 36)
    spec = ViewSpec(size=24, solarize_p=0.3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    whole = make_views(imgs, spec, torch.Generator().manual_seed(18))
    monkeypatch.setattr(aug, "CPU_BLOCK_BYTES", 3 * 4 * (36 * 36 + 24 * 24) * 6)  # blocks of <= 6 samples
    assert aug._block(torch.device("cpu"), 40, 36, 36, 24) == 6
    # blocks: every sample once, <= 6 samples, one op sequence per block
    p = sample_params(spec, 40, 36, 36, torch.Generator().manual_seed(18))
    blocks = aug._cpu_parts(p, spec, 40, 36, 36, threads=1)
    assert torch.equal(torch.cat(blocks).sort().values, torch.arange(40))
    assert max(len(i) for i in blocks) <= 6 and len(blocks) >= 40 / 6
    for idx in blocks:
        for flag in ("jitter", "gray", "blur", "solarize"):
            assert len(set(p[flag][idx].tolist())) == 1, flag
        if p["jitter"][idx[0]]:
            assert len({tuple(r) for r in p["order"][idx].tolist()}) == 1
    blocked = make_views(imgs, spec, torch.Generator().manual_seed(18))
    # same arithmetic per sample; only multi-threaded reductions (contrast mean) may round differently
    assert (blocked - whole).abs().max() < FLOAT_ATOL
    x = to_float(imgs)
    assert (apply_params(x, p, spec) - whole).abs().max() < FLOAT_ATOL
    # two threads: blocks go to two single-threaded workers; same numbers, thread count restored
    torch.set_num_threads(2)
    try:
        assert torch.equal(make_views(imgs, spec, torch.Generator().manual_seed(18)), blocked)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_small_cpu_batches_split_across_threads_only_when_worth_it(monkeypatch):
    import sslstudy.augment as aug

    spec = ViewSpec(size=32)
    p = sample_params(spec, 64, 32, 32, torch.Generator().manual_seed(20))
    per = 3 * 4 * (32 * 32 + 32 * 32)
    assert len(aug._cpu_parts(p, spec, 64, 32, 32, threads=2)) == 1  # 1.5 MiB in all: one part
    monkeypatch.setattr(aug, "CPU_MIN_PART_BYTES", per * 16)
    parts = aug._cpu_parts(p, spec, 64, 32, 32, threads=2)
    assert [len(i) for i in parts] == [32, 32] and torch.equal(torch.cat(parts), torch.arange(64))
    imgs = noise_images(64, 32, 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = make_views(imgs, spec, torch.Generator().manual_seed(21))
        torch.set_num_threads(1)
        one = make_views(imgs, spec, torch.Generator().manual_seed(21))
    finally:
        torch.set_num_threads(threads)
    assert (two - one).abs().max() < FLOAT_ATOL


def test_blur_drops_only_negligible_outer_taps():
    import sslstudy.augment as aug

    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0])
    full = aug._gaussian_kernels(sigma, 23)
    for i, s in enumerate(sigma.tolist()):
        rows = torch.zeros(5, dtype=torch.bool)
        rows[i] = True
        k = aug._trim_taps(full, rows)
        d = (23 - k.shape[1]) // 2
        assert torch.equal(k, full[:, d : 23 - d])  # the same weights, centred
        assert full[i, :d].sum() < aug.TAIL_MASS  # what is dropped is negligible
        assert d == 0 or full[i, : d + 1].sum() >= aug.TAIL_MASS  # and no more than that
        if s <= 0.5:
            assert k.shape[1] <= 7
        if s >= 2.0:
            assert k.shape[1] >= 21
    # the block's widest kernel decides
    assert (
        aug._trim_taps(full, torch.tensor([True, False, False, True, False])).shape[1]
        == aug._trim_taps(full, torch.tensor([False, False, False, True, False])).shape[1]
    )
    # end to end: trimmed (here to 11 taps) and full kernels blur alike to float32 rounding
    small = full[:3]
    trimmed = aug._trim_taps(small, torch.ones(3, dtype=torch.bool))
    assert trimmed.shape[1] == 11
    x = torch.rand(3, 3, 40, 40)
    assert (aug._blur(x, trimmed.float()) - aug._blur(x, small.float())).abs().max() < 1e-6


def test_empty_batch():
    v = make_views(torch.zeros(0, 8, 8, 3, dtype=torch.uint8), ViewSpec(size=8), torch.Generator())
    assert v.shape == (0, 3, 8, 8)


def test_runs_on_another_device_without_reading_its_data():
    """On the 'meta' device tensors have no data: any .item(), nonzero() or bool() on device
    tensors (a host sync on CUDA), or a CPU tensor mixed into a device op, would raise here."""
    imgs = torch.empty(16, 32, 32, 3, dtype=torch.uint8, device="meta")
    for spec in (ViewSpec(solarize_p=0.5), ViewSpec(size=16, scale=(0.05, 0.14), jitter=(0.8, 0.8, 0.8, 0.2))):
        v = make_views(imgs, spec, torch.Generator().manual_seed(19))
        assert v.device.type == "meta" and v.shape == (16, 3, spec.size, spec.size)
    assert eval_view(imgs, 24).shape == (16, 3, 24, 24)
