"""Faiss k-means and clustering quality scores (NMI / ARI).

:func:`kmeans` is the one k-means of the project: the evaluation uses it to score
frozen features, and the clustering-based methods (DeepCluster, PCL) call it on
every epoch's features, so it takes plain arrays, returns plain arrays and has
no side effects beyond the faiss thread count it sets (and restores) around
its own work.

Faiss behaviour worth knowing, handled here:

* ``k > N`` makes faiss throw a C++ exception with an unhelpful message; it is
  checked first and reported as a :class:`~sslstudy.errors.UserError` naming k and N.
* ``N < 39 * k`` makes faiss print ``WARNING clustering N points to k
  centroids ...`` straight to the C ``stderr`` (unconditionally, not through
  ``verbose`` or Python's :mod:`warnings`). k-means with few points per
  centroid is legitimate for small evaluation sets, so the threshold
  (``min_points_per_centroid``) is set to 1, which silences the message; the
  clustering itself is unaffected (faiss only uses that number for the
  warning) and the function returns normally.
* Faiss subsamples to ``k * max_points_per_centroid`` points (default 256) when
  given more. Here ``max_points_per_centroid=None`` means *no* subsampling, so
  that the centroids are fitted on all the points; pass a number to trade
  accuracy for speed on very large feature sets.
* Faiss uses every OpenMP thread of the machine by default; here it uses
  ``torch.get_num_threads()`` threads (which follows ``OMP_NUM_THREADS`` and
  ``torch.set_num_threads``) so that it does not oversubscribe the cores that
  the rest of the process was told to use; small jobs (``N * k * d`` < 16M)
  run on one thread, which is faster there (see :func:`faiss_threads`).
* On CPU the result is deterministic for a fixed seed and thread count.
* GPU: faiss's GPU index, on this process's own GPU (:func:`gpu_index`), when faiss sees
  GPUs; otherwise, where torch sees CUDA (a faiss-cpu install on a GPU machine), the same Lloyd
  iterations written in torch (:func:`lloyd_torch`, ``init="random"`` only). Its steps mirror
  faiss's ``Clustering.train``; the tests check it against faiss on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import faiss
import numpy as np

from sslstudy.errors import UserError

__all__ = [
    "kmeans",
    "lloyd_torch",
    "cluster_scores",
    "assignment_scores",
    "as_float32_matrix",
    "faiss_threads",
    "use_gpu",
    "gpu_index",
    "this_gpu",
]

# faiss stores the seed in a C int.
_SEED_MODULUS = 2**31
# Below this many multiply-adds per pass, faiss runs single-threaded (see faiss_threads).
_SMALL_WORK = 1 << 24
# init argument -> faiss ClusteringInitMethod constant
_INIT_METHODS = {
    "random": "ClusteringInitMethod_RANDOM",
    "kmeans++": "ClusteringInitMethod_KMEANS_PLUS_PLUS",
}


def as_float32_matrix(x: np.ndarray, name: str = "x") -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(N, d)`` array with finite values.

    Raises :class:`UserError` (one line, naming ``name``) for a wrong shape, an
    empty array or NaN/inf values.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise UserError(f"{name}: cannot be read as a numeric array ({exc})") from None
    if arr.ndim != 2:
        raise UserError(f"{name}: expected a 2-D array (N, d), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"{name}: empty array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UserError(f"{name}: expected numeric features, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise UserError(f"{name}: {bad} row(s) contain NaN or inf values")
    return arr


def _default_threads() -> int:
    try:
        import torch

        return max(1, int(torch.get_num_threads()))
    except Exception:  # torch missing or broken: keep faiss's own setting
        return max(1, int(faiss.omp_get_max_threads()))


@contextlib.contextmanager
def faiss_threads(n: int | None = None, work: float | None = None) -> Iterator[int]:
    """Run faiss with ``n`` OpenMP threads, then restore the previous count.

    ``n=None`` means torch's thread count, except that a job whose ``work``
    (multiply-adds of one pass, e.g. ``N * k * d``) is below ~16M runs on one
    thread: OpenMP fork/join then costs more than it saves, and on a busy
    machine spinning threads make small jobs many times slower (docs/performance.md).
    """
    if n is None:
        n = 1 if work is not None and work < _SMALL_WORK else _default_threads()
    n = max(1, int(n))
    previous = int(faiss.omp_get_max_threads())
    faiss.omp_set_num_threads(n)
    try:
        yield n
    finally:
        faiss.omp_set_num_threads(previous)


def _num_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def use_gpu(gpu: bool | None) -> bool:
    """Resolve a ``gpu`` argument: ``None`` means "if faiss sees a GPU"."""
    n = _num_gpus()
    if gpu is None:
        return n > 0
    if gpu and n == 0:
        raise UserError("gpu=True was requested but this faiss build sees no GPU (install faiss-gpu or pass gpu=None)")
    return bool(gpu)


def _torch_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch missing or broken: no torch fallback
        return False


def _kmeans_backend(gpu: bool | None, init: str) -> str:
    """``"faiss-gpu"``, ``"torch-cuda"`` or ``"faiss-cpu"`` for a ``gpu`` argument (None: any GPU)."""
    if gpu is not None and not gpu:
        return "faiss-cpu"
    if _num_gpus() > 0:
        return "faiss-gpu"
    if _torch_cuda():
        if init == "random":
            return "torch-cuda"
        if gpu:
            raise UserError(
                f"kmeans: init={init!r} on a GPU needs faiss-gpu (the torch fallback does "
                f"init='random' only); install faiss-gpu, use init='random' or pass gpu=None"
            )
        return "faiss-cpu"
    if gpu:
        raise UserError(
            "gpu=True was requested but neither faiss nor torch sees a GPU (install faiss-gpu "
            "or a CUDA build of torch, or pass gpu=None)"
        )
    return "faiss-cpu"


#: Where the torch fallback runs (a module constant so that the tests can run that path on the CPU).
_TORCH_DEVICE = "cuda"

#: faiss's relative perturbation when it splits a cluster to refill an empty one (Clustering.cpp).
_SPLIT_EPS = 1.0 / 1024


def lloyd_torch(
    x,
    k: int,
    seed: int = 0,
    niter: int = 20,
    nredo: int = 1,
    spherical: bool = False,
    n_train: int | None = None,
    device="cpu",
    init_centroids=None,
):
    """faiss's ``Clustering.train`` with a flat L2 index, in torch (for GPUs faiss cannot use).

    ``x``: ``(N, d)`` float32 torch tensor or array. Samples ``n_train`` training points (all if
    None), starts from ``k`` distinct random training points (or ``init_centroids``), runs ``niter``
    Lloyd steps (assign by squared L2 via ``|x|^2 - 2 x.c + |c|^2``, as faiss's BLAS path does;
    mean of the assigned points; an emptied cluster takes a copy of the largest one, both
    perturbed by +-1/1024 in alternating coordinates, as faiss splits clusters; centroids
    renormalised if ``spherical``), and keeps the run of ``nredo`` with the lowest final
    objective. Returns the ``(k, d)`` float32 centroids on ``device``.
    """
    import torch

    from sslstudy import hostsync

    xt = torch.as_tensor(x, dtype=torch.float32).to(device)
    g = torch.Generator().manual_seed(int(seed) % _SEED_MODULUS)
    n = xt.shape[0]
    if n_train is not None and n_train < n:
        xt = xt[torch.randperm(n, generator=g)[:n_train].to(device)]
    best, best_obj = None, float("inf")
    for _ in range(nredo):
        if init_centroids is not None:
            c = torch.as_tensor(init_centroids, dtype=torch.float32).to(device).clone()
        else:
            c = xt[torch.randperm(xt.shape[0], generator=g)[:k].to(device)].clone()
        obj = float("inf")
        for _ in range(niter):
            assign, dist = _nearest_torch(xt, c)
            # not torch.bincount: on CUDA it reads the largest label back to size its output (a host sync)
            counts = torch.zeros(k, dtype=torch.long, device=c.device).index_add_(0, assign, torch.ones_like(assign))
            c = torch.zeros_like(c).index_add_(0, assign, xt) / counts.clamp_min(1).unsqueeze(1).to(c.dtype)
            # one read per iteration: the objective and the cluster sizes (which clusters emptied)
            read = hostsync.read_on_host(torch.cat([dist.sum().double()[None], counts.double()]))
            obj, sizes = float(read[0]), read[1:].astype(np.int64)
            for ci in np.flatnonzero(sizes == 0).tolist():  # few; faiss's split, largest first
                cj = int(sizes.argmax())
                sign = torch.ones(c.shape[1], device=c.device)
                sign[1::2] = -1
                c[ci] = c[cj] * (1 + _SPLIT_EPS * sign)
                c[cj] = c[cj] * (1 - _SPLIT_EPS * sign)
                sizes[ci] = sizes[cj] // 2
                sizes[cj] -= sizes[ci]
            if spherical:
                c = torch.nn.functional.normalize(c, dim=1)
        if obj < best_obj or best is None:
            best, best_obj = c, obj
    return best


def _nearest_torch(x, c):
    """Index and squared L2 distance of each row's nearest centroid, in row chunks of <= 256 MiB."""
    import torch

    cc = (c * c).sum(1)
    chunk = max(1, 2**26 // c.shape[0])
    idx, dist = [], []
    for xs in x.split(chunk):
        d2 = torch.addmm(cc, xs, c.T, alpha=-2.0).add_((xs * xs).sum(1, keepdim=True))
        dmin, imin = d2.min(dim=1)
        idx.append(imin)
        dist.append(dmin.clamp_min_(0.0))
    return torch.cat(idx), torch.cat(dist)


def this_gpu() -> int:
    """The GPU this process works on (CUDA's numbering, which faiss shares): torch's current device,
    which sslstudy.distributed.init_from_env sets to each rank's own; 0 where torch sees no CUDA."""
    try:
        import torch

        return int(torch.cuda.current_device()) if torch.cuda.is_available() else 0
    except Exception:  # torch missing or broken: the first GPU
        return 0


def gpu_index(index: faiss.Index) -> faiss.Index:
    """A copy of the CPU ``index`` on this process's GPU only (:func:`this_gpu`), not spread over every
    GPU of the node (faiss.index_cpu_to_all_gpus), whose memory the other ranks of a job hold."""
    return faiss.index_cpu_to_gpus_list(index, gpus=[this_gpu()])


def _flat_l2_index(d: int, gpu: bool) -> faiss.Index:
    index = faiss.IndexFlatL2(d)
    return gpu_index(index) if gpu else index


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 20,
    nredo: int = 1,
    spherical: bool = False,
    max_points_per_centroid: int | None = None,
    gpu: bool | None = None,
    *,
    init: str = "random",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd k-means with faiss.

    Args:
        x: ``(N, d)`` features; float64 or non-contiguous input is converted to
            contiguous float32.
        k: number of clusters, ``1 <= k <= N``.
        seed: random seed of the initialisation (taken modulo 2**31).
        niter: Lloyd iterations per run.
        nredo: number of runs with different initialisations; the run with the
            lowest objective is kept.
        spherical: re-normalise the centroids to unit length after every
            iteration (faiss semantics). For cosine ("spherical") k-means pass
            L2-normalised ``x``; assignments are by L2 distance, which for unit
            vectors is the same as by cosine similarity.
        max_points_per_centroid: train on a random subsample of
            ``k * max_points_per_centroid`` points when ``N`` is larger;
            ``None`` (default) uses all points.
        gpu: ``None``: faiss's GPU index if faiss sees a GPU, else the torch
            Lloyd (:func:`lloyd_torch`) on CUDA if torch sees one and ``init`` is
            ``"random"``, else faiss on the CPU. ``True``: one of the two GPU
            paths or a UserError; ``False``: faiss on the CPU.
        init: ``"random"`` (faiss's default: k distinct random points, as in
            DeepCluster / PCL) or ``"kmeans++"`` (D^2 seeding, much less prone
            to merging two true clusters when k is small; needs a faiss with
            ``ClusteringParameters.init_method``, e.g. 1.15).

    Returns:
        ``(centroids (k, d) float32, assignments (N,) int64, sq_distances (N,)
        float32)``: each point's nearest centroid and its squared L2 distance
        to it, so ``sq_distances.sum()`` is the k-means inertia.
    """
    xf = as_float32_matrix(x, "kmeans: x")
    n, d = xf.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise UserError(f"kmeans: k must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise UserError(f"kmeans: k must be >= 1, got k={k}")
    if k > n:
        raise UserError(f"kmeans: cannot make k={k} clusters from N={n} points (need k <= N)")
    if int(niter) < 1 or int(nredo) < 1:
        raise UserError(f"kmeans: niter and nredo must be >= 1, got niter={niter}, nredo={nredo}")
    if max_points_per_centroid is not None and int(max_points_per_centroid) < 1:
        raise UserError(f"kmeans: max_points_per_centroid must be >= 1 or None, got {max_points_per_centroid}")
    if init not in _INIT_METHODS:
        raise UserError(f"kmeans: init must be one of {sorted(_INIT_METHODS)}, got {init!r}")
    backend = _kmeans_backend(gpu, init)
    n_train = n if max_points_per_centroid is None else min(n, k * int(max_points_per_centroid))
    if backend == "torch-cuda":
        import torch

        c = lloyd_torch(
            xf,
            k,
            seed=seed,
            niter=int(niter),
            nredo=int(nredo),
            spherical=spherical,
            n_train=n_train,
            device=_TORCH_DEVICE,
        )
        from sslstudy import hostsync

        assign, dist = _nearest_torch(torch.from_numpy(xf).to(c.device), c)
        return (
            np.ascontiguousarray(hostsync.read_on_host(c), dtype=np.float32),
            hostsync.read_on_host(assign).astype(np.int64),
            hostsync.read_on_host(dist).astype(np.float32),
        )

    cp = faiss.ClusteringParameters()
    if init != "random":
        if not hasattr(cp, "init_method"):
            raise UserError(
                f"kmeans: init={init!r} needs a faiss with ClusteringParameters.init_method "
                f"(1.15 has it; this is {faiss.__version__}); upgrade faiss or use init='random'"
            )
        cp.init_method = getattr(faiss, _INIT_METHODS[init])
    cp.niter = int(niter)
    cp.nredo = int(nredo)
    cp.seed = int(seed) % _SEED_MODULUS
    cp.spherical = bool(spherical)
    cp.verbose = False
    # Only used by faiss to print its "please provide at least 39*k points"
    # warning to C stderr; 1 silences it (k <= N is checked above).
    cp.min_points_per_centroid = 1
    # None: pick the smallest value with k * value > N, so faiss never subsamples.
    cp.max_points_per_centroid = int(n // k + 1) if max_points_per_centroid is None else int(max_points_per_centroid)

    with faiss_threads(work=float(n) * k * d):
        clus = faiss.Clustering(d, k, cp)
        index = _flat_l2_index(d, backend == "faiss-gpu")
        clus.train(xf, index)
        centroids = faiss.vector_to_array(clus.centroids).reshape(k, d).astype(np.float32, copy=False)
        centroids = np.ascontiguousarray(centroids)
        # Final assignment against the returned centroids (with nredo > 1 the
        # index may hold the last run's centroids rather than the best ones).
        index.reset()
        index.add(centroids)
        dist, assign = index.search(xf, 1)

    sq = np.maximum(dist[:, 0], 0.0).astype(np.float32)  # BLAS path can give tiny negatives
    return centroids, assign[:, 0].astype(np.int64), sq


def assignment_scores(labels: np.ndarray, assignments: np.ndarray) -> dict[str, float]:
    """NMI (arithmetic normalisation, sklearn's default) and ARI of two labelings."""
    y = np.asarray(labels)
    a = np.asarray(assignments)
    if y.ndim != 1:
        raise UserError(f"labels: expected a 1-D array, got shape {y.shape}")
    if a.ndim != 1:
        raise UserError(f"assignments: expected a 1-D array, got shape {a.shape}")
    if len(y) != len(a):
        raise UserError(f"labels has {len(y)} entries but assignments has {len(a)}")
    if len(y) == 0:
        raise UserError("labels: empty array")
    _, yi = np.unique(y, return_inverse=True)
    _, ai = np.unique(a, return_inverse=True)
    table = np.zeros((yi.max() + 1, ai.max() + 1), dtype=np.int64)
    np.add.at(table, (yi, ai), 1)
    return {"nmi": _nmi(table), "ari": _ari(table)}


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _nmi(table: np.ndarray) -> float:
    """Normalised mutual information of a contingency table, arithmetic-mean normalisation
    (sklearn's ``normalized_mutual_info_score`` default, its edge cases included)."""
    if table.shape[0] == table.shape[1] == 1:
        return 1.0
    n = table.sum()
    nz = table > 0
    outer = np.outer(table.sum(1), table.sum(0))[nz].astype(np.float64)
    mi = float((table[nz] / n * (np.log(table[nz] * float(n)) - np.log(outer))).sum())
    if mi <= 0.0:
        return 0.0
    norm = (_entropy(table.sum(1)) + _entropy(table.sum(0))) / 2
    return mi / max(norm, np.finfo(np.float64).eps)


def _ari(table: np.ndarray) -> float:
    """Adjusted Rand index of a contingency table (Hubert & Arabie); 1 when both labelings
    are the trivial one (one cluster, or all singletons), like sklearn."""
    pairs = lambda c: float((c * (c - 1)).sum()) / 2  # noqa: E731
    n = float(table.sum())
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2) if n > 1 else 0.0
    top = (rows + cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def cluster_scores(x: np.ndarray, labels: np.ndarray, k: int | None = None, seed: int = 0, **kw) -> dict:
    """k-means on ``x`` scored against ground-truth ``labels``.

    ``k`` defaults to the number of distinct labels; ``kw`` goes to :func:`kmeans`,
    with ``init="kmeans++"`` and ``nredo=5`` unless given. (With few clusters,
    random initialisation often puts two seeds in one true cluster, and even
    k-means++ does so on ~15 % of runs for 8 well-separated blobs; the best of
    5 k-means++ runs makes the score measure the features, not the seeding.)
    Returns ``{"nmi": float, "ari": float, "k": int}``.
    """
    kw.setdefault("init", "kmeans++")
    kw.setdefault("nredo", 5)
    xf = as_float32_matrix(x, "cluster_scores: x")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise UserError(f"cluster_scores: labels must be 1-D, got shape {y.shape}")
    if len(y) != xf.shape[0]:
        raise UserError(f"cluster_scores: x has {xf.shape[0]} rows but labels has {len(y)} entries")
    if k is None:
        k = int(np.unique(y).size)
    _, assign, _ = kmeans(xf, k, seed=seed, **kw)
    scores = assignment_scores(y, assign)
    scores["k"] = int(k)
    return scores
