"""Images/s of the trainer's batch read from a packed (memory-mapped uint8) dataset, against an
in-RAM copy of the same array in the same run and against what the training step consumes.

    PYTHONPATH=ssl python benchmarks/bench_read.py [--quick] [--dir /tmp]

A packed domain folder (sslstudy.data.packed: images.npy + labels.csv + meta.json) of random
pixels is written to a temporary folder under --dir and opened with load_dataset, as the trainer
does. Each read is one training batch: random image indices, sorted, fancy-indexed out of the
memmap and wrapped with torch.from_numpy -- the trainer's line. Timed in interleaved rounds:

* memmap, file in the page cache (the steady state once a dataset that fits in RAM was read once)
* the same indices from an in-RAM numpy array (the reference: a plain memory gather)
* memmap into a reused buffer: one copy per image into an array kept across batches (no fresh
  50 MB allocation, so no page faults per batch)
* memmap, cold: the file's pages dropped from this machine's page cache first (posix_fadvise
  DONTNEED on this one file only); a host cache below a VM may still serve them

Rates are images/s of wall-clock time (best and median round) and per CPU-second of the reading
thread (thread_time: what one core delivers when the machine is not shared; on a loaded machine
the wall-clock figures mostly measure waiting for a core).

Two configurations: 256 px images (ImageNet-style storage for 224 px crops) against the ~2,000
images/s a ResNet-50 two-view SimCLR step consumes on an H100 (/work/shared/README.md; target:
reading >= 10x that), and 32 px images (the default study) against the ~1,000 images/s (2,000
views/s) a 2-thread CPU pretraining process consumes here (docs/performance.md). On CUDA the copy of the batch
to the GPU is timed too (pageable and pinned).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from sslstudy.data.packed import load_dataset, write_dataset  # noqa: E402
from sslstudy.names import IMAGES_FILE  # noqa: E402

GPU_STEP_IMAGES_PER_S = 2000  # ResNet-50, two views, bf16 + channels_last, H100 (shared/README.md)
CPU_STEP_IMAGES_PER_S = 1000  # width-16 CNN, 32 px, two views, 2 threads, this machine (docs/performance.md)


def write_random_domain(path: Path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = pd.DataFrame({"index": np.arange(n), "split": "train", "domain": "bench", "fine": 0})
    meta = {
        "name": "bench",
        "levels": ["fine"],
        "classes": {"fine": ["c0"]},
        "parents": {},
        "image_size": size,
        "n_images": n,
        "source": {"generator": "bench_read"},
    }
    write_dataset(path, images, labels, meta)


def drop_from_page_cache(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench(root: Path, label: str, n: int, size: int, batch: int, rounds: int, need: float, need_what: str) -> dict:
    path = root / f"bench_{size}px"
    t = time.perf_counter()
    write_random_domain(path, n, size)
    ds = load_dataset(path)
    in_ram = np.array(ds.images)  # a plain in-memory copy of the same array
    gen = np.random.default_rng(1)
    print(
        f"\n[{label}] {n:,} images of {size} px ({ds.images.nbytes / 2**20:.0f} MiB, written in "
        f"{time.perf_counter() - t:.1f} s), batch {batch}, {rounds} rounds; images/s of the best round (median)"
    )

    def batch_idx():
        return np.sort(gen.choice(n, size=batch, replace=False))

    def read(source):
        return lambda idx: torch.from_numpy(np.asarray(source[idx]))

    buf = np.empty((batch, size, size, 3), np.uint8)

    def into_buffer(idx):  # one copy per image into a buffer reused across batches
        for j, i in enumerate(idx):
            buf[j] = ds.images[i]
        return torch.from_numpy(buf)

    jobs = {
        "memmap (the trainer's read)": read(ds.images),
        "memmap into a reused buffer": into_buffer,
        "in-RAM array (reference)": read(in_ram),
        "memmap, cold": read(ds.images),
    }
    for fn in jobs.values():
        fn(batch_idx())  # warm-up (the file is in the page cache after writing)
    wall = {k: [] for k in jobs}
    cpu = {k: [] for k in jobs}
    for _ in range(rounds):
        for k, fn in jobs.items():
            idx = batch_idx()
            if k == "memmap, cold":
                drop_from_page_cache(path / IMAGES_FILE)
            t0, c0 = time.perf_counter(), time.thread_time()
            x = fn(idx)
            wall[k].append(batch / (time.perf_counter() - t0))
            cpu[k].append(batch / max(time.thread_time() - c0, 1e-9))
    assert x.shape == (batch, size, size, 3) and x.dtype == torch.uint8
    best = {k: max(v) for k, v in wall.items()}
    med = {k: statistics.median(v) for k, v in wall.items()}
    cbest = {k: max(v) for k, v in cpu.items()}
    print(f"  {'':<34}{'wall clock':>12}  {'(median)':>10}  {'per CPU-second':>15}")
    for k in jobs:
        print(f"  {k:<34}{best[k]:12,.0f}  ({med[k]:>8,.0f})  {cbest[k]:15,.0f}")
    m, r = "memmap (the trainer's read)", "in-RAM array (reference)"
    print(
        f"  RATIO memmap / in-RAM gather        {best[m] / best[r]:8.2f}x ({med[m] / med[r]:.2f}x)   "
        f"per CPU-second {cbest[m] / cbest[r]:.2f}x"
    )
    print(
        f"  RATIO memmap / {need_what} {need:,.0f} img/s: {best[m] / need:.1f}x ({med[m] / need:.1f}x)   "
        f"per CPU-second {cbest[m] / need:.1f}x   target >= 10x"
    )
    c = "memmap, cold"
    print(f"  RATIO memmap cold / that need       {best[c] / need:8.1f}x ({med[c] / need:.1f}x)")

    if torch.cuda.is_available():
        x = read(ds.images)(batch_idx())
        pinned = x.pin_memory()
        for name, src in (("+ copy to GPU, pageable", x), ("+ copy to GPU, pinned", pinned)):
            src.to("cuda", non_blocking=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                src.to("cuda", non_blocking=True)
            torch.cuda.synchronize()
            print(
                f"  {name:<34}{10 * batch / (time.perf_counter() - t0):12,.0f} images/s "
                f"({torch.cuda.get_device_name()})"
            )
    else:
        print("  GPU copy: no CUDA: skipped")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller files, fewer rounds (a smoke run)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary dataset is written")
    args = ap.parse_args()
    rounds = 3 if args.quick else 10
    print(f"numpy {np.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="sslstudy-bench-read-") as tmp:
        bench(
            Path(tmp),
            "ImageNet-style",
            512 if args.quick else 2048,
            256,
            256,
            rounds,
            GPU_STEP_IMAGES_PER_S,
            "ResNet-50 H100 step's",
        )
        bench(
            Path(tmp),
            "default study",
            4096 if args.quick else 16384,
            32,
            256,
            rounds,
            CPU_STEP_IMAGES_PER_S,
            "CPU pretraining's",
        )


if __name__ == "__main__":
    main()
