"""Evaluation of frozen features: cosine k-nearest-neighbour classifier and linear probe.

Both functions return predicted labels rather than an accuracy, so callers can
score them at any level of a label hierarchy (e.g. train on fine labels and map
predicted fine classes to their parents). They are deliberately generic: no
knowledge of datasets or hierarchies lives here.

kNN: cosine similarity via faiss ``IndexFlatIP`` on L2-normalised float32
features (GPU index, on this process's GPU, when faiss sees a GPU). ``weighting="exp"`` is the weighted
vote of InstDisc / DINO: each of the k neighbours votes for its class with
weight ``exp(sim / T)``; ``"uniform"`` is a plain majority vote. Ties go to the
smallest label.

Linear probe (choice: minibatch SGD, not full-batch L-BFGS): multinomial
logistic regression, i.e. one linear layer ``(d -> n_classes)`` with
cross-entropy, on features standardised with the training mean/std. SGD with
momentum 0.9 (Nesterov), per-step cosine decay of the learning rate to 0 and
L2 weight decay on the weights. The layer starts at zero (the problem is
convex, so nothing is lost) and the minibatch order comes from a
``torch.Generator`` seeded with ``seed``, so on CPU the result is a
deterministic function of the inputs, ``seed`` and the thread count. The
gradient is written out in closed form (softmax - onehot) on plain tensors:
the update is exactly ``torch.optim.SGD(momentum=0.9, nesterov=True)``'s, but
without the autograd/optimizer overhead, which dominates for a model this
small (such small problems run on one torch thread, which is faster than two
and, on a busy machine, much faster; timings: docs/performance.md).
With the defaults (lr 0.5, weight decay 5e-4) it lands close to scikit-learn's
``LogisticRegression`` on standardised features (tests/eval/test_eval.py checks
it; the measured gap: docs/performance.md).

:func:`linear_heads` trains one such classifier per (lr, weight decay) of a grid at once, on the
same minibatches (one matrix product per step for all heads); the evaluation keeps the head that
is best on the val split (sslstudy.eval.frozen.choose_linear). kNN on CUDA without a faiss GPU
build searches with torch (one matrix product and top-k per block of query rows).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import faiss
import numpy as np
import torch

from sslstudy import hostsync
from sslstudy.errors import UserError
from sslstudy.eval.kmeans import as_float32_matrix, faiss_threads, gpu_index, use_gpu

__all__ = [
    "l2_normalize",
    "knn_predict",
    "knn_predict_grid",
    "knn_accuracy",
    "linear_heads",
    "LinearHeads",
    "linear_probe",
    "accuracy",
]

# Test rows handled per faiss search / vote accumulation, to bound memory.
_CHUNK = 8192
# Similarities held at once by the torch (CUDA) kNN search.
_TORCH_SIMS = 1 << 28
# Largest k that faiss's GPU flat search accepts; larger k searches on CPU.
_GPU_MAX_K = 2048
# Linear-probe steps with batch * d * classes below this run single-threaded.
_SMALL_STEP_FLOPS = 1 << 22


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, as contiguous float32; all-zero rows stay zero."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    # Zero rows divide by 1 and stay zero (no NaN); tiny positive norms are used as they are.
    out = arr / np.where(norms > 0, norms, 1.0).astype(np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


def _labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise UserError(f"{name}: expected a 1-D label array, got shape {arr.shape}")
    if len(arr) != n:
        raise UserError(f"{name} has {len(arr)} labels but the features have {n} rows")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise UserError(f"{name}: labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch on ``n`` intra-op threads (``None``: leave as is)."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _check_dims(train_x: np.ndarray, test_x: np.ndarray) -> None:
    if train_x.shape[1] != test_x.shape[1]:
        raise UserError(f"train_x has {train_x.shape[1]} feature dimensions but test_x has {test_x.shape[1]}")


def _knn_backend(gpu: bool | None, device, k: int) -> str:
    """``"faiss-gpu"``, ``"torch"`` (CUDA torch without a faiss GPU) or ``"faiss-cpu"``."""
    if use_gpu(gpu) and k <= _GPU_MAX_K:  # faiss GPU search supports k <= 2048 only
        return "faiss-gpu"
    if device is not None and torch.device(device).type == "cuda" and gpu is None:
        return "torch"
    return "faiss-cpu"


def _neighbours(
    xtr: np.ndarray, xte: np.ndarray, k: int, backend: str, device
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(start, similarities (m, k) descending, neighbour rows (m, k)) per chunk of _CHUNK test rows."""
    if backend == "torch":
        index = torch.from_numpy(xtr).to(device)
        rows = max(1, min(_CHUNK, _TORCH_SIMS // xtr.shape[0]))  # bounds the (rows, N_train) similarity block
        for start in range(0, xte.shape[0], rows):
            q = torch.from_numpy(xte[start : start + rows]).to(device)
            sims, nbrs = torch.topk(q @ index.t(), k, dim=1)  # sorted, as faiss's search
            yield start, hostsync.read_on_host(sims), hostsync.read_on_host(nbrs)
        return
    with faiss_threads(work=float(xtr.shape[0]) * xtr.shape[1] * min(xte.shape[0], _CHUNK)):
        index = faiss.IndexFlatIP(xtr.shape[1])
        if backend == "faiss-gpu":
            index = gpu_index(index)
        index.add(xtr)
        for start in range(0, xte.shape[0], _CHUNK):
            sims, nbrs = index.search(xte[start : start + _CHUNK], k)
            yield start, sims, nbrs


def knn_predict_grid(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    ks: list[int],
    temperature: float = 0.07,
    weighting: str = "exp",
    gpu: bool | None = None,
    device=None,
) -> dict[int, np.ndarray]:
    """:func:`knn_predict` for every k of ``ks`` from one search of the largest k (the neighbours come
    sorted by similarity, so each k votes with the first k of them). ``device``: a CUDA device searches
    there with torch when faiss sees no GPU. Returns {k: predictions} in the order of ``ks``."""
    if weighting not in ("exp", "uniform"):
        raise UserError(f"knn_predict: weighting must be 'exp' or 'uniform', got {weighting!r}")
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise UserError(f"knn_predict: k must be a positive integer, got {ks if len(ks) != 1 else ks[0]!r}")
    if weighting == "exp" and not (_is_real(temperature) and temperature > 0):
        raise UserError(f"knn_predict: temperature must be > 0, got {temperature!r}")
    xtr = as_float32_matrix(train_x, "train_x")
    xte = as_float32_matrix(test_x, "test_x")
    _check_dims(xtr, xte)
    ytr = _labels(train_y, xtr.shape[0], "train_y")

    classes, ytr_idx = np.unique(ytr, return_inverse=True)
    n_classes = len(classes)
    clipped = {k: int(min(k, xtr.shape[0])) for k in ks}
    k_max = max(clipped.values())
    xtr = l2_normalize(xtr)
    xte = l2_normalize(xte)

    preds = {k: np.empty(xte.shape[0], dtype=np.int64) for k in ks}
    for start, sims, nbrs in _neighbours(xtr, xte, k_max, _knn_backend(gpu, device, k_max), device):
        nbr_cls = ytr_idx[nbrs]  # (m, k); k <= N_train so no -1 neighbours
        if weighting == "exp":
            # Shift by the row maximum: the vote argmax is unchanged and
            # exp() cannot overflow for small temperatures.
            s64 = sims.astype(np.float64)
            weights = np.exp((s64 - s64[:, :1]) / float(temperature))
        else:
            weights = np.ones(nbrs.shape, dtype=np.float64)
        m = nbrs.shape[0]
        rows = np.arange(m, dtype=np.int64)[:, None] * n_classes
        for k in ks:
            kk = clipped[k]
            flat = (rows + nbr_cls[:, :kk]).ravel()
            votes = np.bincount(flat, weights=weights[:, :kk].ravel(), minlength=m * n_classes).reshape(m, n_classes)
            preds[k][start : start + m] = classes[np.argmax(votes, axis=1)]  # first maximum = smallest label
    return preds


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    weighting: str = "exp",
    gpu: bool | None = None,
    device=None,
) -> np.ndarray:
    """Predict labels of ``test_x`` by a cosine kNN vote among ``train_x``.

    Args:
        train_x, test_x: ``(N, d)`` features (any float dtype); L2-normalised here.
        train_y: ``(N_train,)`` integer labels (any integers, not necessarily 0..C-1).
        k: number of neighbours, clipped to ``N_train``.
        temperature: T of the ``exp(sim / T)`` weights (``weighting="exp"`` only).
        weighting: ``"exp"`` (weighted vote) or ``"uniform"`` (majority vote).
        gpu: ``None`` = faiss GPU index if faiss sees a GPU (CPU anyway for k > 2048).
        device: a CUDA device: search there with torch when faiss sees no GPU.

    Returns:
        ``(N_test,)`` int64 predicted labels (values taken from ``train_y``).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"knn_predict: k must be a positive integer, got {k!r}")
    return knn_predict_grid(train_x, train_y, test_x, [k], temperature, weighting, gpu, device)[k]


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``pred == y`` (arrays of equal length)."""
    p = np.asarray(pred)
    t = np.asarray(y)
    if p.shape != t.shape:
        raise UserError(f"predictions have shape {p.shape} but labels have shape {t.shape}")
    if p.size == 0:
        raise UserError("accuracy of an empty prediction array")
    return float(np.mean(p == t))


def knn_accuracy(train_x, train_y, test_x, test_y, **kw) -> float:
    """Accuracy of :func:`knn_predict` on ``(test_x, test_y)``; ``kw`` goes to it."""
    pred = knn_predict(train_x, train_y, test_x, **kw)
    yte = _labels(test_y, len(pred), "test_y")
    return accuracy(pred, yte)


class LinearHeads:
    """Linear classifiers fitted together by :func:`linear_heads`: the training standardisation and one
    weight ``(n_classes, d)`` + bias per head, on the device they were trained on."""

    def __init__(
        self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grid: list[tuple]
    ):
        self.mean, self.std, self.weight, self.bias, self.grid = mean, std, weight, bias, grid

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n_heads, N)`` int64 predictions of every head, ``x`` streamed in chunks of _CHUNK rows."""
        h, c, d = self.weight.shape
        w = self.weight.reshape(h * c, d).t()
        out = []
        for s in range(0, x.shape[0], _CHUNK):
            xb = (torch.from_numpy(as_float32_matrix(x[s : s + _CHUNK], "x")).to(w.device) - self.mean) / self.std
            out.append((xb @ w).reshape(-1, h, c).add_(self.bias).argmax(dim=2).t())
        return hostsync.read_on_host(torch.cat(out, dim=1)).astype(np.int64)


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) standard deviation in float64, _CHUNK rows at a time (numpy's
    std would hold a float64 copy of all of x)."""
    mean = x.mean(axis=0, dtype=np.float64)
    squares = np.zeros(x.shape[1])
    for s in range(0, x.shape[0], _CHUNK):
        d = x[s : s + _CHUNK] - mean
        squares += np.einsum("ij,ij->j", d, d)
    return mean, np.sqrt(squares / x.shape[0])


def linear_heads(
    train_x: np.ndarray,
    train_y: np.ndarray,
    n_classes: int,
    lrs=(0.5,),
    weight_decays=(5e-4,),
    epochs: int = 100,
    batch_size: int = 256,
    seed: int = 0,
    device="cpu",
) -> LinearHeads:
    """One linear classifier per (lr, weight decay) of ``lrs`` x ``weight_decays`` (lr-major order),
    trained at once on the same minibatches (DINOv2's multi-head linear evaluation): the weights of
    all heads are one ``(heads, n_classes, d)`` tensor, so a step is one matrix product whatever the
    number of heads, and each head follows exactly the updates it would follow alone.

    Multinomial logistic regression by minibatch SGD (see the module docstring): features
    standardised with the training mean/std (constant dimensions are centred, not scaled); weights
    and biases zero-initialised; cross-entropy; SGD with momentum 0.9 (Nesterov), each head's lr
    decayed to 0 by a per-step cosine, its L2 weight decay on the weight (not the bias); shuffled
    minibatches of ``batch_size`` (the last one may be smaller) drawn with a CPU ``torch.Generator``
    seeded from ``seed``. Runs on ``device``.

    Args:
        train_y: integer labels in ``[0, n_classes)``.
    """
    xtr = as_float32_matrix(train_x, "train_x")
    ytr = _labels(train_y, xtr.shape[0], "train_y")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise UserError(f"linear_probe: n_classes must be a positive integer, got {n_classes!r}")
    n_classes = int(n_classes)
    if ytr.min() < 0 or ytr.max() >= n_classes:
        raise UserError(f"train_y: labels must lie in [0, {n_classes}), got range [{ytr.min()}, {ytr.max()}]")
    lrs, weight_decays = list(lrs), list(weight_decays)
    for name, val, ok in (
        ("epochs", epochs, isinstance(epochs, (int, np.integer)) and epochs >= 1),
        ("batch_size", batch_size, isinstance(batch_size, (int, np.integer)) and batch_size >= 1),
        ("lr", lrs, bool(lrs) and all(_is_real(v) and v > 0 for v in lrs)),
        ("weight_decay", weight_decays, bool(weight_decays) and all(_is_real(v) and v >= 0 for v in weight_decays)),
    ):
        if not ok:
            raise UserError(
                f"linear_probe: invalid {name}={val[0] if isinstance(val, list) and len(val) == 1 else val!r}"
            )
    device = torch.device(device)
    grid = [(float(lr), float(wd)) for lr in lrs for wd in weight_decays]
    h = len(grid)

    # Statistics accumulated in float64, features kept in float32 (standardised in place: one copy on the device).
    mean, std = _moments(xtr)
    std = np.where(std > 1e-12, std, 1.0)
    mean_t = torch.from_numpy(mean.astype(np.float32)).to(device)
    std_t = torch.from_numpy(std.astype(np.float32)).to(device)
    xtr_t = torch.from_numpy(xtr).to(device, copy=True).sub_(mean_t).div_(std_t)
    ytr_t = torch.from_numpy(np.array(ytr)).to(device)  # a copy: pandas hands out read-only arrays

    n, d = xtr_t.shape
    bs = int(min(batch_size, n))
    steps_per_epoch = math.ceil(n / bs)
    total_steps = int(epochs) * steps_per_epoch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    # Plain tensors and the closed-form gradient of softmax cross-entropy
    # (dL/dlogits = softmax - onehot): the same SGD as torch.optim.SGD(momentum=0.9,
    # nesterov=True) with coupled L2 decay on the weight, without autograd/optimizer
    # overhead (which dominates for a model this small).
    weight = torch.zeros(h, n_classes, d, device=device)
    bias = torch.zeros(h, n_classes, device=device)
    buf_w = torch.zeros_like(weight)
    buf_b = torch.zeros_like(bias)
    base_lr = torch.tensor([g[0] for g in grid], device=device)
    wd = torch.tensor([g[1] for g in grid], device=device)
    momentum = 0.9
    step = 0
    # Small per-step products run faster (and far more predictably on busy
    # machines) on one thread than with OpenMP fork/join on every op.
    threads = 1 if device.type == "cpu" and bs * d * n_classes < _SMALL_STEP_FLOPS else None
    with torch.no_grad(), _torch_threads(threads):
        for _ in range(int(epochs)):
            perm = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                xb = xtr_t[idx]
                m = len(idx)
                g = torch.softmax((xb @ weight.reshape(h * n_classes, d).t()).reshape(m, h, n_classes) + bias, dim=2)
                g[torch.arange(m, device=device), :, ytr_t[idx]] -= 1.0
                g /= m
                grad_w = (g.reshape(m, h * n_classes).t() @ xb).reshape(h, n_classes, d)
                grad_w.add_(weight * wd[:, None, None])
                grad_b = g.sum(dim=0)
                buf_w.mul_(momentum).add_(grad_w)
                buf_b.mul_(momentum).add_(grad_b)
                step_lr = base_lr * (0.5 * (1.0 + math.cos(math.pi * step / total_steps)))
                weight.sub_(grad_w.add_(buf_w, alpha=momentum) * step_lr[:, None, None])
                bias.sub_(grad_b.add_(buf_b, alpha=momentum) * step_lr[:, None])
                step += 1
    return LinearHeads(mean_t, std_t, weight, bias, grid)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    epochs: int = 100,
    lr: float = 0.5,
    weight_decay: float = 5e-4,
    batch_size: int = 256,
    seed: int = 0,
    device="cpu",
) -> np.ndarray:
    """Train one linear classifier (:func:`linear_heads` with one head) on frozen ``train_x`` and
    predict ``test_x``: ``(N_test,)`` int64 labels in ``[0, n_classes)``."""
    xte = as_float32_matrix(test_x, "test_x")
    _check_dims(as_float32_matrix(train_x, "train_x"), xte)
    heads = linear_heads(train_x, train_y, n_classes, [lr], [weight_decay], epochs, batch_size, seed, device)
    return heads.predict(xte)[0]
