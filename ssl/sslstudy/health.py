"""Label-free collapse checks: the effective rank and normalised std of a fixed batch of
embeddings, and the loss value each method reaches at collapse."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

RANKME_EPS = 1e-7  # Garrido et al. 2023


def effective_rank(z: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe of (n, d) embeddings: exp of the entropy of p_k = σ_k / Σσ + eps over the singular
    values σ (float64, CPU). About min(n, d) for isotropic embeddings, 1 for a rank-1 matrix, 0 for zeros."""
    s = torch.linalg.svdvals(torch.as_tensor(z).detach().to("cpu", torch.float64))
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def normalized_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of the centred, then L2-normalised (n, d)
    embeddings: 0 when all embeddings are equal, about 1/√d for isotropic ones (SimSiam, Chen & He
    2021). Centring first: a backbone's ReLU features share one large mean direction, which
    would make healthy features read as collapsed."""
    z = torch.as_tensor(z).detach().to("cpu", torch.float64)
    zn = F.normalize(z - z.mean(dim=0), dim=1)
    return float(zn.std(dim=0).mean())


def embedding_health(z: torch.Tensor) -> dict:
    """The record `collapse_check` reads, for one batch of embeddings."""
    return dict(effective_rank=effective_rank(z), normalized_std=normalized_std(z), dim=int(z.shape[1]))


def _need(info: Mapping, key: str, method: str) -> int:
    if key not in info:
        raise TypeError(f"trivial_loss({method!r}) needs {key}=")
    return int(info[key])


def trivial(method: str, **info) -> tuple[float, str] | None:
    """(value, how it reads) of the loss at collapse, or None where the method has none.

    swav (prototypes=K): equal embeddings get uniform Sinkhorn codes, so the loss is ln K plus
      KL(uniform || softmax of the scores), ln K once the scores are uniform.
    deepcluster (k=K): a classifier on constant features against balanced pseudo-labels: ln K
      (K the non-empty clusters; one cluster holding everything gives ln 1 = 0).
    simclr (batch=N, the global batch): cross-entropy over 2N-1 equal logits, any temperature.
    moco, densecl (queue=K): cross-entropy over 1 + K equal logits once the queue holds collapsed
      keys (densecl's global and dense terms alike, so any loss_lambda).
    byol: 2 - 2 cos = 0 when predictions equal the targets.
    barlow (proj_dim=d, the projector's output): standardising constant features gives 0 (the eps keeps it
      finite), so C = 0
      and the loss is the on-diagonal sum d · (0 - 1)^2 = d, whatever lambd.
    """
    if method in ("swav", "deepcluster"):
        k = _need(info, "prototypes" if method == "swav" else "k", method)
        return math.log(k), f"ln {k}"
    if method == "simclr":
        m = 2 * _need(info, "batch", method) - 1
        return math.log(m), f"ln {m}"
    if method in ("moco", "densecl"):
        m = _need(info, "queue", method) + 1
        return math.log(m), f"ln {m}"
    if method == "byol":
        return 0.0, "0"
    if method == "barlow":
        d = _need(info, "proj_dim", method)
        return float(d), f"d = {d}"
    return None


def trivial_info(spec: Mapping) -> dict:
    """What `trivial` needs (its info=) for a run spec (config.pretrain_spec), from the method's params."""
    method, p = spec["method"]["name"], spec["method"]["params"]
    if method == "swav":
        return dict(prototypes=p["prototypes"])
    if method == "deepcluster":
        return dict(k=p["k"])
    if method == "simclr":
        return dict(batch=spec["batch_size"])
    if method in ("moco", "densecl"):
        return dict(queue=p["queue"])
    if method == "barlow":
        return dict(proj_dim=p["proj_dims"][-1])
    return {}


def trivial_loss(method: str, **info) -> float | None:
    """The loss value at collapse (see `trivial`), or None where no such value exists (pcl)."""
    t = trivial(method, **info)
    return None if t is None else t[0]


def _final_run(records: Sequence[Mapping], key: str, flagged) -> list[Mapping]:
    """The unbroken run of flagged records that ends the history, among the records that have
    `key` (empty when the latest of them is fine)."""
    run: list[Mapping] = []
    for r in records:
        v = r.get(key)
        if v is not None and v == v:  # skip missing and NaN
            run = run + [r] if flagged(v) else []
    return run


def collapse_check(
    metrics: Sequence[Mapping],
    method: str,
    name: str = "",
    dim: int | None = None,
    *,
    rank_floor: float = 1.5,
    rank_fraction: float = 0.01,
    std_fraction: float = 0.1,
    loss_rtol: float = 1e-3,
    patience: int = 3,
    **info,
) -> tuple[bool, str]:
    """metrics: per-epoch records (metrics.jsonl lines: epoch, loss and, where measured,
    effective_rank, normalized_std, dim); dim: the embeddings' d (else the records'); info: what
    `trivial(method, ...)` needs -> (collapsed, reason line).

    Collapsed when the history ends with at least one of:
      - an effective rank below max(rank_floor, rank_fraction · d);
      - a normalised std below std_fraction / √d;
      - `patience` or more epochs of a loss within loss_rtol (relative) of a non-zero trivial value;
        a zero one (byol) is also the loss's ideal, so it decides nothing.
    The epoch given is where the earliest of these final runs starts.
    """
    d = dim or next((int(r["dim"]) for r in reversed(metrics) if r.get("dim")), None)
    t = trivial(method, **info)
    checks = [
        (
            "effective_rank",
            lambda v: v < max(rank_floor, rank_fraction * (d or 0)),
            1,
            lambda v: f"effective rank {v:.1f}" + (f" of {d}" if d else ""),
        ),
        (
            "loss",
            lambda v: t is not None and t[0] > 0 and abs(v - t[0]) <= loss_rtol * t[0],
            patience,
            lambda v: f"loss {v:.3f} = {t[1]}",
        ),
    ]
    if d:
        checks.insert(
            1,
            (
                "normalized_std",
                lambda v: v < std_fraction / math.sqrt(d),
                1,
                lambda v: f"normalised std {v:.2g} vs 1/√d = {1 / math.sqrt(d):.3f}",
            ),
        )
    found = []  # (first record of a final run, evidence)
    for key, flagged, length, say in checks:
        run = _final_run(metrics, key, flagged)
        if run and len(run) >= length:
            found.append((run[0], say(run[0][key])))
    who = f"{name}: " if name else ""
    if found:
        epoch = min(r.get("epoch", math.inf) for r, _ in found)
        return True, f"{who}collapsed at epoch {epoch} ({'; '.join(e for _, e in found)})"
    last = metrics[-1] if metrics else {}
    seen = [
        f"effective rank {last['effective_rank']:.1f}" + (f" of {d}" if d else "") if "effective_rank" in last else "",
        f"loss {last['loss']:.3f}, {t[1]} at collapse" if t and "loss" in last else "",
    ]
    seen = "; ".join(x for x in seen if x)
    return False, f"{who}no collapse" + (f" (epoch {last.get('epoch', '?')}: {seen})" if seen else "")
