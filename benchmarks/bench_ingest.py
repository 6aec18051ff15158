"""Ingestion throughput (images/s) of `sslstudy ingest imagefolder`, all cores vs one process, in
one run on the same files.

    PYTHONPATH=ssl python benchmarks/bench_ingest.py [--n 2000] [--size 64] [--quick]

Builds an ImageFolder tree of photo-sized JPEGs (500 x 375, quality 90, ImageNet's typical shape;
smooth shapes with grain, so they compress like photos rather than like noise) in a temp folder,
then times the whole ingest (listing, decoding, resizing, writing the packed folder) with 1
worker process and with one per core, in interleaved rounds, keeping the best round of each (the
median is printed too), so that load from other processes disturbs the ratio as little as
possible. For the ceiling, the same pool runs a pure-Python loop (no I/O, nothing shared) with 1
and with all workers: on a machine shared with other work, that ratio is what more processes can
buy at all. Also times, in one process, what JPEG draft decoding buys over decoding every pixel.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from sslstudy.data.ingest import ingest, square  # noqa: E402
from sslstudy.data.synth import generate_domain  # noqa: E402


def make_tree(root: Path, n: int, n_classes: int = 20) -> None:
    small, labels, _ = generate_domain("natural", -(-n // 64) * 64, image_size=48, seed=0)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.fromarray(small[i]).resize((500, 375), Image.Resampling.BICUBIC)
        grain = rng.normal(0, 6, (375, 500, 3))
        arr = np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        path = root / f"class{i % n_classes:02d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, quality=90)


def burn(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def burn_seconds(workers: int, tasks: int = 16, n: int = 1_000_000) -> float:
    t = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
        list(ex.map(burn, [n] * tasks))
    return time.perf_counter() - t


def naive(path: Path, size: int) -> np.ndarray:
    """Decode every pixel, then shorter side + centre crop (no draft)."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    s = size / min(w, h)
    rgb = rgb.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    w, h = rgb.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(rgb.crop((left, top, left + size, top + size)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="400 images, 2 rounds")
    a = ap.parse_args()
    if a.quick:
        a.n, a.rounds = 400, 2
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_tree(tmp / "tree", a.n)
        print(f"made {a.n} JPEGs (500 x 375) in {time.perf_counter() - t:.1f} s; {cores} cores")
        times: dict[int, list[float]] = {1: [], cores: []}
        for _ in range(a.rounds):
            for w in times:
                t = time.perf_counter()
                ingest(
                    "imagefolder",
                    tmp / "tree",
                    tmp / "out" / f"w{w}",
                    size=a.size,
                    workers=w,
                    force=True,
                    progress=False,
                )
                times[w].append(time.perf_counter() - t)
        for w, ts in times.items():
            print(
                f"  {w:3d} process(es): {a.n / min(ts):8.0f} images/s "
                f"(best of {len(ts)}; median {a.n / statistics.median(ts):.0f})"
            )
        print(f"ingest to {a.size} px, {cores} cores vs 1 process: {min(times[1]) / min(times[cores]):.2f}x")
        ceiling = {w: min(burn_seconds(w) for _ in range(a.rounds)) for w in times}
        print(f"ceiling (pure-Python loop, same pool), {cores} vs 1 process: {ceiling[1] / ceiling[cores]:.2f}x")
        files = sorted((tmp / "tree").rglob("*.jpg"))[: min(a.n, 300)]
        per = {}
        for name, fn in (
            ("draft", lambda p: square(Image.open(p), a.size)),
            ("full decode", lambda p: naive(p, a.size)),
        ):
            best = float("inf")
            for _ in range(a.rounds):
                t = time.perf_counter()
                for p in files:
                    fn(p)
                best = min(best, time.perf_counter() - t)
            per[name] = len(files) / best
            print(f"  1 process, decode + resize only, {name}: {per[name]:.0f} images/s")
        print(f"JPEG draft decoding vs decoding every pixel: {per['draft'] / per['full decode']:.2f}x")


if __name__ == "__main__":
    main()
