"""Dense evaluation of a frozen backbone: does its feature map, before pooling, hold per-pixel
information? (DenseCL's question: dense pretraining for dense prediction.)

* Linear dense probe: the backbone's last feature map (``forward_map``: (N, C, h, w), h = w = 4
  for cnn4 or a small-stem ResNet at 32 px), channels standardised with the train split's
  statistics, a 1x1 convolution (one linear map per location) to every mask level's classes at
  once, its logits upsampled bilinearly to the mask size and trained with per-pixel cross-entropy
  (255 = ignore) on the train split: Adam, seeded minibatch order, zero init (the problem is
  convex). Scored on the test split per mask level: mIoU (mean over classes present in the labels
  or the predictions) and pixel accuracy, both over the pixels not ignored.
* Label-free correspondence: two random views of each test image (crop + flip + the photometric
  augmentations of ``views``); each location of view 1's map is matched to the view-2 location of
  most similar feature (cosine, DenseCL's own matching); the score is the fraction of view-1
  locations inside view 2 matched within one cell of where the crops put them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..augment import ViewSpec, apply_params, eval_view, sample_params, to_float
from ..data.packed import PackedDataset
from ..errors import UserError
from ..methods.densecl import match_locations
from ..names import IGNORE

CORRESPONDENCE = "correspondence"  # the metric of the label-free score
LABEL_FREE = "label-free"  # its level column


# ---------------------------------------------------------------------------- features


def require_map(backbone: torch.nn.Module, what: str) -> None:
    if not hasattr(backbone, "forward_map"):
        raise UserError(f"{what}: backbone {type(backbone).__name__} has no feature map (forward_map); "
                        f"use cnn4 or a resnet in pretrain.backbone.arch")


@torch.no_grad()
def feature_maps(backbone: torch.nn.Module, ds: PackedDataset, indices: np.ndarray, size: int,
                 batch_size: int = 512) -> torch.Tensor:
    """(len(indices), C, h, w) float32 CPU: the backbone's map of each image's evaluation view."""
    device = next(backbone.parameters()).device
    out = []
    for i in range(0, len(indices), batch_size):
        batch = torch.from_numpy(np.asarray(ds.images[indices[i:i + batch_size]])).to(device)
        out.append(backbone.forward_map(eval_view(batch, size)).float().cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------- linear probe


def _logits(head: torch.nn.Conv2d, f: torch.Tensor, mask_size: int) -> torch.Tensor:
    return F.interpolate(head(f), size=(mask_size, mask_size), mode="bilinear", align_corners=False)


def dense_probe(f_tr: torch.Tensor, y_tr: torch.Tensor, f_te: torch.Tensor, n_classes: list[int], epochs: int,
                batch_size: int, lr: float, seed: int) -> torch.Tensor:
    """Train the 1x1-conv head on (f_tr (N, C, h, w), y_tr (N, L, S, S) long labels of L levels,
    IGNORE skipped) -> (M, L, S, S) uint8 predictions for f_te."""
    mean = f_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = f_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    f_tr, f_te = (f_tr - mean) / std, (f_te - mean) / std
    s = y_tr.shape[-1]
    head = torch.nn.Conv2d(f_tr.shape[1], sum(n_classes), 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(f_tr), generator=g).split(batch_size):
            logits = _logits(head, f_tr[idx], s).split(n_classes, dim=1)
            target = y_tr[idx]
            loss = sum(F.cross_entropy(z, target[:, j], ignore_index=IGNORE) for j, z in enumerate(logits))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    pred = torch.empty((len(f_te), len(n_classes), s, s), dtype=torch.uint8)
    with torch.no_grad():
        for idx in torch.arange(len(f_te)).split(batch_size):
            for j, z in enumerate(_logits(head, f_te[idx], s).split(n_classes, dim=1)):
                pred[idx, j] = z.argmax(dim=1).to(torch.uint8)
    return pred


def confusion(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """(k, k) int64 counts [true, predicted] over the pixels whose label is not IGNORE."""
    t = np.asarray(target).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    keep = t != IGNORE
    return np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)


def miou(conf: np.ndarray) -> float:
    """Mean intersection over union of the classes present in the labels or the predictions."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    seen = union > 0
    return float((inter[seen] / union[seen]).mean()) if seen.any() else float("nan")


def pixel_accuracy(conf: np.ndarray) -> float:
    return float(np.trace(conf) / max(conf.sum(), 1))


# ---------------------------------------------------------------------------- correspondence


def true_locations(box1: torch.Tensor, flip1: torch.Tensor, box2: torch.Tensor, flip2: torch.Tensor,
                   grid: tuple[int, int]) -> torch.Tensor:
    """Where each cell centre of view 1 lies in view 2, from the crops that made them.

    box*: (N, 4) crop (top, left, height, width) in image pixels; flip*: (N,) horizontal flips;
    grid: (gh, gw) cells of the feature map -> (N, gh*gw) long: the view-2 cell (row-major) that
    holds the same image point, -1 where the point is outside view 2."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    a = ((cols.flatten() + 0.5) / gw).double()[None]  # fraction across view 1, left to right
    b = ((rows.flatten() + 0.5) / gh).double()[None]
    t1, l1, h1, w1 = box1.double().unbind(1)
    t2, l2, h2, w2 = box2.double().unbind(1)
    a = torch.where(flip1[:, None], 1 - a, a)
    x = l1[:, None] + w1[:, None] * a   # image coordinates of the cell centres
    y = t1[:, None] + h1[:, None] * b
    a2 = (x - l2[:, None]) / w2[:, None]
    a2 = torch.where(flip2[:, None], 1 - a2, a2)
    b2 = (y - t2[:, None]) / h2[:, None]
    inside = (a2 >= 0) & (a2 < 1) & (b2 >= 0) & (b2 < 1)
    cell = (b2 * gh).floor().long().clamp(0, gh - 1) * gw + (a2 * gw).floor().long().clamp(0, gw - 1)
    return torch.where(inside, cell, -1)


def near(match: torch.Tensor, truth: torch.Tensor, gw: int) -> torch.Tensor:
    """(N, S) bool: the matched cell is within one cell (8-neighbourhood) of the true one."""
    dr = (match // gw - truth // gw).abs()
    dc = (match % gw - truth % gw).abs()
    return (truth >= 0) & (dr <= 1) & (dc <= 1)


@torch.no_grad()
def matched_views(backbone: torch.nn.Module, images: np.ndarray, specs: list[ViewSpec], seed: int) -> dict:
    """Two views of each uint8 (N, H, W, 3) image (specs[0], specs[1]; CPU generator seeded with
    ``seed``), their maps' DenseCL matches and the true locations -> dict(view1, view2, match,
    truth, grid, accuracy): the fraction of view-1 cells inside view 2 matched within one cell."""
    device = next(backbone.parameters()).device
    x = to_float(torch.from_numpy(np.ascontiguousarray(images))).to(device)
    g = torch.Generator().manual_seed(seed)
    views, params = [], []
    for spec in specs[:2]:
        p = sample_params(spec, x.shape[0], x.shape[-2], x.shape[-1], g)
        views.append(apply_params(x, p, spec))
        params.append(p)
    f1, f2 = backbone.forward_map(views[0]), backbone.forward_map(views[1])
    grid = tuple(f1.shape[-2:])
    match = match_locations(f1, f2).cpu()
    truth = true_locations(params[0]["box"], params[0]["flip"], params[1]["box"], params[1]["flip"], grid)
    acc = float(near(match, truth, grid[1]).sum() / (truth >= 0).sum().clamp(min=1))
    return dict(view1=views[0], view2=views[1], match=match, truth=truth, grid=grid, accuracy=acc)


def correspondence_accuracy(backbone: torch.nn.Module, ds: PackedDataset, indices: np.ndarray, spec: ViewSpec,
                            seed: int, batch_size: int = 512) -> float:
    """`matched_views`'s accuracy over ``indices``, in batches (pooled over every view-1 cell)."""
    hits = total = 0.0
    for k, i in enumerate(range(0, len(indices), batch_size)):
        r = matched_views(backbone, np.asarray(ds.images[indices[i:i + batch_size]]), [spec, spec], seed + k)
        inside = int((r["truth"] >= 0).sum())
        hits += r["accuracy"] * inside
        total += inside
    return hits / max(total, 1.0)


# ---------------------------------------------------------------------------- both


def evaluate_dense(backbone: torch.nn.Module, ds: PackedDataset, cfg: dict, size: int, views: dict) -> pd.DataFrame:
    """Tidy rows (level, metric, value): miou and pixel_acc per mask level, and the label-free
    correspondence score. ``cfg``: the config's ``dense`` block; ``views``: a ViewSpec's fields
    (the study's pretraining view), the view size set to ``size``."""
    require_map(backbone, str(ds.path))
    ds.require_masks()
    tr, te = ds.split_indices("train"), ds.split_indices("test")
    f_tr = feature_maps(backbone, ds, tr, size, cfg["batch_size"])
    f_te = feature_maps(backbone, ds, te, size, cfg["batch_size"])
    levels = ds.mask_levels
    k = [len(ds.mask_classes(lv)) for lv in levels]
    y_tr = torch.from_numpy(np.stack([ds.mask_array(lv, tr) for lv in levels], axis=1)).long()
    pred = dense_probe(f_tr, y_tr, f_te, k, cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["seed"]).numpy()
    rows = []
    for j, lv in enumerate(levels):
        conf = confusion(pred[:, j], ds.mask_array(lv, te), k[j])
        rows += [(lv, "miou", miou(conf)), (lv, "pixel_acc", pixel_accuracy(conf))]
    n = cfg["correspondence_images"]
    if n:
        spec = ViewSpec(**dict(views, size=size))
        rows.append((LABEL_FREE, CORRESPONDENCE, correspondence_accuracy(backbone, ds, te[:n], spec, cfg["seed"])))
    return pd.DataFrame(rows, columns=["level", "metric", "value"])
