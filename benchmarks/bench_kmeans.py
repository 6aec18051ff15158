"""k-means: sslstudy.eval.kmeans.kmeans (faiss) vs scikit-learn's KMeans at equal settings,
side by side in one process; inertia of both reported.

    PYTHONPATH=ssl python benchmarks/bench_kmeans.py [--n 100000 --d 128 --k 1000] [--threads 2,1]
    PYTHONPATH=ssl python benchmarks/bench_kmeans.py --quick        # 20,000 x 128, k=200

Data: a seeded Gaussian mixture of k overlapping clusters (means ~ N(0, 0.5^2), unit noise), so
that Lloyd's iterations keep moving for all 20 iterations (on well-separated blobs scikit-learn
stops early when no label changes). Both sides run the same algorithm: Lloyd, k distinct random
points as the start, one run (n_init=1 / nredo=1), the same number of iterations (scikit-learn
tol=0), all points (faiss does not subsample), the same thread count (torch threads for ours,
threadpoolctl for scikit-learn). Inertia is evaluated for both by one exact nearest-centroid search
on all points; "equal inertia" means within +-1%. Rounds alternate between the two; best and
median round are printed.

On CUDA (if available): kmeans(gpu=True) (faiss's GPU index if faiss sees the GPU, else the torch
Lloyd fallback) on the same data, and on 1M x 256, k=10,000, 20 iterations against the 0.85 s a
torch Lloyd took on an H100 (issue 7).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from sslstudy.eval import kmeans as km_mod  # noqa: E402

H100_TORCH_LLOYD_S = 0.85  # 1M x 256, k=10,000, 20 iterations (issue 7)


def mixture(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = 0.5 * rng.normal(size=(k, d))
    return (means[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, _ = index.search(x, 1)
    return float(np.maximum(dist, 0).astype(np.float64).sum())


def cpu(x: np.ndarray, k: int, niter: int, threads: int, rounds: int) -> None:
    def ours():
        torch.set_num_threads(threads)
        return km_mod.kmeans(x, k, seed=0, niter=niter)[0]

    def sk():
        with threadpool_limits(limits=threads):
            km = KMeans(
                n_clusters=k, init="random", n_init=1, max_iter=niter, tol=0.0, algorithm="lloyd", random_state=0
            ).fit(x)
        sk.n_iter, sk.own_inertia = km.n_iter_, km.inertia_
        return km.cluster_centers_

    times = {"faiss": [], "sklearn": []}
    cents = {}
    for _ in range(rounds):
        for name, fn in (("faiss", ours), ("sklearn", sk)):
            t = time.perf_counter()
            cents[name] = fn()
            times[name].append(time.perf_counter() - t)
    ine = {name: inertia(x, c) for name, c in cents.items()}
    best = {k_: min(v) for k_, v in times.items()}
    med = {k_: statistics.median(v) for k_, v in times.items()}
    rel = ine["faiss"] / ine["sklearn"] - 1
    print(f"\n[CPU, {threads} thread(s)] {rounds} round(s); seconds of the best round (median; all rounds)")
    for name in ("faiss", "sklearn"):
        print(
            f"  {name:<8} {best[name]:8.2f} s  ({med[name]:.2f}; {', '.join(f'{t:.2f}' for t in times[name])})"
            f"   inertia {ine[name]:.6g}"
        )
    print(f"  (scikit-learn ran {sk.n_iter} iterations; its own inertia_ {sk.own_inertia:.6g})")
    ok = "yes" if abs(rel) <= 0.01 else "NO"
    print(
        f"  RATIO faiss/sklearn speed {best['sklearn'] / best['faiss']:6.2f}x  ({med['sklearn'] / med['faiss']:.2f}x)"
        f"   target >= 10x;  inertia faiss vs sklearn {100 * rel:+.2f}% (equal within 1%: {ok})"
    )
    cpu.best_faiss = best["faiss"]


def gpu(x: np.ndarray, k: int, niter: int, big: tuple[int, int, int], check_on_cpu: bool = False) -> None:
    """The GPU rows. ``check_on_cpu``: run this code through the torch fallback on the CPU (to check
    the script on a machine without a GPU; the times then mean nothing)."""
    if check_on_cpu:
        km_mod._TORCH_DEVICE = "cpu"
        km_mod._kmeans_backend = lambda gpu, init: "torch-cuda"
        name, sync = "CPU check of the GPU code", (lambda: None)
    elif torch.cuda.is_available() or km_mod._num_gpus() > 0:
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "faiss GPU"
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    else:
        print("\n[GPU] no CUDA: skipped")
        return
    backend = km_mod._kmeans_backend(True, "random")

    def timed(data, kk):
        km_mod.kmeans(data[: kk * 4], kk, niter=2, gpu=True)  # warm-up (CUDA context, kernels)
        sync()
        t = time.perf_counter()
        c, _, _ = km_mod.kmeans(data, kk, seed=0, niter=niter, gpu=True)
        sync()
        return time.perf_counter() - t, c

    dt, c = timed(x, k)
    cpu_s = getattr(cpu, "best_faiss", float("nan"))
    print(
        f"\n[GPU: {name}, {backend}] {x.shape[0]:,} x {x.shape[1]}, k={k}: {dt:.2f} s, inertia "
        f"{inertia(x, c):.6g}; faiss CPU in this run took {cpu_s:.2f} s ({cpu_s / dt:.1f}x)"
    )
    n, d, kk = big
    dt, _ = timed(mixture(n, d, kk, seed=1), kk)
    print(
        f"  {n:,} x {d}, k={kk:,}, {niter} iterations: {dt:.2f} s (H100 reference for 1,000,000 x 256, "
        f"k=10,000, torch Lloyd: {H100_TORCH_LLOYD_S} s; ratio {H100_TORCH_LLOYD_S / dt:.2f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--threads", default="2", help="comma-separated thread counts, e.g. 2,1 (default 2)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per thread count (default 1)")
    ap.add_argument("--quick", action="store_true", help="20,000 x 128, k=200, 3 rounds")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU part")
    ap.add_argument(
        "--check-gpu-code-on-cpu",
        action="store_true",
        help="run the GPU part through the torch fallback on the CPU at a tiny size (no GPU needed)",
    )
    args = ap.parse_args()
    if args.quick:
        args.n, args.k, args.rounds = 20_000, 200, 3
    x = mixture(args.n, args.d, args.k)
    print(
        f"faiss {faiss.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        f"{args.n:,} x {args.d} float32, k={args.k}, {args.niter} Lloyd iterations"
    )
    t0 = time.perf_counter()
    for threads in (int(t) for t in args.threads.split(",")):
        cpu(x, args.k, args.niter, threads, args.rounds)
    if args.check_gpu_code_on_cpu:
        gpu(x, args.k, args.niter, big=(4 * args.n, 64, 2 * args.k), check_on_cpu=True)
    elif not args.no_gpu:
        gpu(x, args.k, args.niter, big=(1_000_000, 256, 10_000))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
