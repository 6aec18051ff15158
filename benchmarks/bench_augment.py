"""Views/s of sslstudy.augment.make_views (whole batch at once) vs a per-image
torchvision.transforms.v2 pipeline of the same ops, side by side in one process.

    PYTHONPATH=ssl python benchmarks/bench_augment.py [--quick]

CPU, torch.set_num_threads(2), batch 256: 32 px views of 32 px images and 224 px views of 256 px
images. Each configuration is warmed up, then timed in interleaved rounds (ours, torchvision,
ours, ...); the best round of each is reported (and the median round), so that load from other
processes disturbs the comparison as little as possible. torchvision gets uint8 (3, H, W) images, one at a time, as a dataloader worker
would, and ends with ToDtype + Normalize; at 224 px it is timed on a subset of the batch (its cost
is per image). For reference the torchvision pipeline is also timed with 1 thread (what a
DataLoader worker process uses). The per-sample vs per-batch colour-jitter order of ours is timed
too. On CUDA (if available) ours is also timed on the GPU (images already on the device).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from torchvision.transforms import v2  # noqa: E402

from sslstudy.augment import MEAN, STD, ViewSpec, apply_params, make_views, sample_params, to_float  # noqa: E402

BATCH = 256


def torchvision_pipeline(spec: ViewSpec) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True),
        v2.RandomHorizontalFlip(spec.hflip),
        v2.RandomApply([v2.ColorJitter(*spec.jitter)], p=spec.jitter_p),
        v2.RandomGrayscale(spec.gray_p),
        v2.RandomApply([v2.GaussianBlur(spec.blur_kernel, spec.blur_sigma)], p=spec.blur_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(MEAN), list(STD)),
    ])


def per_image(fn, n_images: int) -> float:
    """Seconds per image of one call of fn() that makes n_images views."""
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / n_images


def with_threads(n: int, fn):
    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)
    return run


def bench(label: str, size: int, in_size: int, rounds: int, ours_iters: int, tv_images: int, gen) -> None:
    spec = ViewSpec(size=size)
    imgs = torch.randint(0, 256, (BATCH, in_size, in_size, 3), dtype=torch.uint8, generator=gen)  # as stored
    imgs_chw = imgs.permute(0, 3, 1, 2).contiguous()   # per-image uint8 (3, H, W) for torchvision
    tv = torchvision_pipeline(spec)

    def ours():
        for _ in range(ours_iters):
            make_views(imgs, spec, gen)

    def theirs():
        torch.stack([tv(imgs_chw[i]) for i in range(tv_images)])

    theirs_1t = with_threads(1, theirs)

    x01 = to_float(imgs)
    params = sample_params(spec, BATCH, in_size, in_size, gen)
    batch_order = dict(params, order=params["order"][:1].expand(BATCH, 4).clone())

    def ours_sample_order():
        apply_params(x01, params, spec)

    def ours_batch_order():
        apply_params(x01, batch_order, spec)

    jobs = {"ours": (ours, BATCH * ours_iters), "torchvision": (theirs, tv_images),
            "torchvision 1 thread": (theirs_1t, tv_images),
            "apply, per-sample order": (ours_sample_order, BATCH),
            "apply, per-batch order": (ours_batch_order, BATCH)}
    for fn, _ in jobs.values():       # warm-up
        fn()
    times = {k: [] for k in jobs}
    for _ in range(rounds):
        for k, (fn, n) in jobs.items():
            times[k].append(per_image(fn, n))
    best = {k: min(v) for k, v in times.items()}       # least disturbed by other processes
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n[{label}] {size} px views of {in_size} px uint8 images, batch {BATCH}, CPU, "
          f"{torch.get_num_threads()} threads, {rounds} rounds (torchvision on {tv_images} images/round); "
          f"views/s of the best round (median round)")

    def row(name, key):
        print(f"  {name:<27}{1 / best[key]:10.1f} views/s  ({1 / med[key]:.1f})")

    row("ours make_views", "ours")
    row("torchvision v2 per image", "torchvision")
    print(f"  RATIO ours/torchvision     {best['torchvision'] / best['ours']:10.1f}x        "
          f"({med['torchvision'] / med['ours']:.1f}x)")
    row("(torchvision, 1 thread)", "torchvision 1 thread")
    print(f"  (ratio ours/torchvision 1 thread {best['torchvision 1 thread'] / best['ours']:.1f}x)")
    print(f"  jitter order: apply_params per-sample {1 / best['apply, per-sample order']:.1f} views/s, "
          f"per-batch {1 / best['apply, per-batch order']:.1f} views/s: per-sample order takes "
          f"{best['apply, per-sample order'] / best['apply, per-batch order']:.2f}x the time "
          f"({med['apply, per-sample order'] / med['apply, per-batch order']:.2f}x)")

    if torch.cuda.is_available():
        dev_imgs = imgs.cuda()
        for _ in range(3):
            make_views(dev_imgs, spec, gen)
        torch.cuda.synchronize()
        n_iter = 50 if size <= 64 else 10
        t = time.perf_counter()
        for _ in range(n_iter):
            make_views(dev_imgs, spec, gen)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / (n_iter * BATCH)
        print(f"  ours on {torch.cuda.get_device_name()}: {1.0 / dt:10.1f} views/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    bench("small", 32, 32, rounds=2 if args.quick else 8, ours_iters=4, tv_images=BATCH, gen=gen)
    bench("ImageNet", 224, 256, rounds=1 if args.quick else 3, ours_iters=1, tv_images=32, gen=gen)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
