"""Views/s of sslstudy.augment.make_views (whole batch at once) vs a per-image
torchvision.transforms.v2 pipeline of the same ops, side by side in one process.

    PYTHONPATH=ssl python benchmarks/bench_augment.py [--quick] [--threads 2]

CPU, batch 256: 32 px views of 32 px images and 224 px views of 256 px images. Both sides start
from the same uint8 images and end with normalised float32 views of the same size made by the same
ops (random resized crop, flip, colour jitter, grayscale, Gaussian blur). torchvision gets uint8
(3, H, W) images one at a time, as a dataloader worker would, and is run two ways with the same
cores: one process-wide pool of --threads intra-op threads, and --threads single-threaded worker
threads taking one image each (how a DataLoader with that many workers uses the cores); the faster
of the two is the reference. Both sides are also timed on 1 thread. Rows are timed in interleaved
rounds after a warm-up; the best round (least disturbed by other processes) and the median round
are printed. torchvision draws its parameters from the global torch RNG, seeded alike every round,
and at 224 px is timed on 128 images (its cost is per image; the blurred share then varies by
about 4% between subsets, not between rounds). The per-sample vs per-batch colour-jitter order of
ours is timed too.

On CUDA (if available) ours is timed on the GPU with the images already there, as a ratio against
the views/s a bare ResNet-50 two-view step consumes on an H100 (~4,000, /work/shared/README.md;
target >= 4x), and torchvision per image on the GPU is timed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from sslstudy.augment import MEAN, STD, ViewSpec, apply_params, make_views, sample_params, to_float  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

BATCH = 256
GPU_STEP_VIEWS_PER_S = 4000  # bare ResNet-50 two-view step, bf16 + channels_last, H100 (shared/README.md)


def torchvision_pipeline(spec: ViewSpec) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True),
            v2.RandomHorizontalFlip(spec.hflip),
            v2.RandomApply([v2.ColorJitter(*spec.jitter)], p=spec.jitter_p),
            v2.RandomGrayscale(spec.gray_p),
            v2.RandomApply([v2.GaussianBlur(spec.blur_kernel, spec.blur_sigma)], p=spec.blur_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(MEAN), list(STD)),
        ]
    )


def with_threads(n: int, fn):
    def run():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)

    return run


def time_rounds(jobs: dict, rounds: int) -> dict[str, list[float]]:
    """views/s of every job per round; jobs: name -> (fn, views made per call)."""
    for fn, _ in jobs.values():  # warm-up
        fn()
    rates = {k: [] for k in jobs}
    for _ in range(rounds):
        for k, (fn, n) in jobs.items():
            t = time.perf_counter()
            fn()
            rates[k].append(n / (time.perf_counter() - t))
    return rates


def bench(label: str, size: int, in_size: int, rounds: int, tv_images: int, threads: int, gen) -> dict:
    spec = ViewSpec(size=size)
    imgs = torch.randint(0, 256, (BATCH, in_size, in_size, 3), dtype=torch.uint8, generator=gen)  # as stored
    imgs_chw = imgs.permute(0, 3, 1, 2).contiguous()  # per-image uint8 (3, H, W) for torchvision
    tv = torchvision_pipeline(spec)

    def ours():
        make_views(imgs, spec, gen)

    def theirs():
        torch.manual_seed(0)
        torch.stack([tv(imgs_chw[i]) for i in range(tv_images)])

    def theirs_workers():
        torch.manual_seed(0)
        old = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                torch.stack(list(pool.map(tv, [imgs_chw[i] for i in range(tv_images)])))
        finally:
            torch.set_num_threads(old)

    x01 = to_float(imgs)
    params = sample_params(spec, BATCH, in_size, in_size, gen)
    batch_order = dict(params, order=params["order"][:1].expand(BATCH, 4).clone())

    jobs = {
        "ours": (with_threads(threads, ours), BATCH),
        "tv": (with_threads(threads, theirs), tv_images),
        "tv workers": (theirs_workers, tv_images),
        "ours 1t": (with_threads(1, ours), BATCH),
        "tv 1t": (with_threads(1, theirs), tv_images),
        "apply sample order": (with_threads(threads, lambda: apply_params(x01, params, spec)), BATCH),
        "apply batch order": (with_threads(threads, lambda: apply_params(x01, batch_order, spec)), BATCH),
    }
    r = time_rounds(jobs, rounds)
    best = {k: max(v) for k, v in r.items()}
    med = {k: statistics.median(v) for k, v in r.items()}
    print(
        f"\n[{label}] {size} px views of {in_size} px uint8 images, batch {BATCH}, CPU, {rounds} rounds "
        f"(torchvision on {tv_images} images/round); views/s of the best round (median round)"
    )

    def row(name, key):
        print(f"  {name:<44}{best[key]:9.1f}  ({med[key]:.1f})")

    ref = "tv" if best["tv"] >= best["tv workers"] else "tv workers"
    row(f"ours make_views, {threads} threads", "ours")
    row(f"torchvision v2 per image, {threads} intra-op threads", "tv")
    row(f"torchvision v2 per image, {threads} x 1-thread workers", "tv workers")
    ratio = best["ours"] / best[ref]
    ratio_med = med["ours"] / med[ref]
    print(f"  RATIO ours/torchvision, {threads} threads each    {ratio:9.2f}x ({ratio_med:.2f}x)   target >= 3x")
    row("ours make_views, 1 thread", "ours 1t")
    row("torchvision v2 per image, 1 thread", "tv 1t")
    ratio1 = best["ours 1t"] / best["tv 1t"]
    print(f"  RATIO ours/torchvision, 1 thread each        {ratio1:9.2f}x ({med['ours 1t'] / med['tv 1t']:.2f}x)")
    print(
        f"  jitter order: apply_params per-sample {best['apply sample order']:.1f} views/s, per-batch "
        f"{best['apply batch order']:.1f} views/s: per-sample order takes "
        f"{best['apply batch order'] / best['apply sample order']:.2f}x the time "
        f"({med['apply batch order'] / med['apply sample order']:.2f}x)"
    )

    if torch.cuda.is_available():
        dev_imgs, dev_chw = imgs.cuda(), imgs_chw.cuda()
        n_tv = min(64, BATCH)

        def ours_gpu():
            make_views(dev_imgs, spec, gen)
            torch.cuda.synchronize()

        def tv_gpu():
            torch.stack([tv(dev_chw[i]) for i in range(n_tv)])
            torch.cuda.synchronize()

        reps = 20 if size <= 64 else 5
        g = time_rounds(
            {"ours": (lambda: [ours_gpu() for _ in range(reps)], BATCH * reps), "tv": (tv_gpu, n_tv)}, rounds=3
        )
        name = torch.cuda.get_device_name()
        print(
            f"  on {name}: ours {max(g['ours']):.0f} views/s, torchvision per image {max(g['tv']):.0f} views/s "
            f"(ratio {max(g['ours']) / max(g['tv']):.1f}x); ours / a ResNet-50 two-view step's "
            f"{GPU_STEP_VIEWS_PER_S} views/s: {max(g['ours']) / GPU_STEP_VIEWS_PER_S:.1f}x (target >= 4x)"
        )
    else:
        print("  GPU: no CUDA: skipped")
    return {"ratio": ratio, "ratio_median": ratio_med, "ratio_1thread": ratio1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and images (a smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    bench("small", 32, 32, rounds=2 if args.quick else 8, tv_images=BATCH, threads=args.threads, gen=gen)
    bench(
        "ImageNet",
        224,
        256,
        rounds=1 if args.quick else 3,
        tv_images=16 if args.quick else 128,
        threads=args.threads,
        gen=gen,
    )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
