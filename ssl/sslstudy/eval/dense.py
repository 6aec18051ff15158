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
        raise UserError(
            f"{what}: backbone {type(backbone).__name__} has no feature map (forward_map); "
            f"use cnn4 or a resnet in pretrain.backbone.arch"
        )


@torch.no_grad()
def feature_maps(
    backbone: torch.nn.Module, ds: PackedDataset, indices: np.ndarray, size: int, batch_size: int = 512
) -> torch.Tensor:
    """(len(indices), C, h, w) float32 CPU: the backbone's map of each image's evaluation view."""
    device = next(backbone.parameters()).device
    out = []
    for i in range(0, len(indices), batch_size):
        batch = torch.from_numpy(np.asarray(ds.images[indices[i : i + batch_size]])).to(device)
        out.append(backbone.forward_map(eval_view(batch, size)).float().cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------- linear probe


_PASS = 256  # images per upsampling pass (bounds memory only)


def _up(f: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)


def upsampling_matrix(h: int, w: int, size: int) -> torch.Tensor:
    """(size*size, h*w): row p holds the weights `_up` gives each map cell at output pixel p."""
    eye = torch.eye(h * w).reshape(h * w, 1, h, w)
    return _up(eye, size).reshape(h * w, size * size).T.contiguous()


def pixel_rows(f: torch.Tensor, y: torch.Tensor, pixels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows of the probe: for ``pixels`` seeded random pixels of each image, the
    feature map upsampled (bilinear) to the mask size at that pixel, and its labels.
    f: (N, C, h, w); y: (N, L, S, S) -> ((N*pixels, C) float, (N*pixels, L) long)."""
    n, c, s = len(f), f.shape[1], y.shape[-1]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, s * s, (n, pixels), generator=g)
    u = upsampling_matrix(f.shape[2], f.shape[3], s)
    x = torch.bmm(u[pick], f.flatten(2).transpose(1, 2))  # (N, pixels, C)
    lab = torch.gather(y.flatten(2), 2, pick[:, None].expand(-1, y.shape[1], -1))  # (N, L, pixels)
    return x.reshape(-1, c), lab.transpose(1, 2).reshape(-1, y.shape[1])


def dense_probe(
    f_tr: torch.Tensor,
    y_tr: torch.Tensor,
    f_te: torch.Tensor,
    n_classes: list[int],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    pixels: int,
) -> torch.Tensor:
    """Train the 1x1-conv head on (f_tr (N, C, h, w), y_tr (N, L, S, S) long labels of L levels,
    IGNORE skipped) -> (M, L, S, S) uint8 predictions for f_te.

    Upsampling is linear and a bilinear weight sum is 1, so the upsampled logits at a pixel are the
    head applied to the upsampled features there: the head is trained as a linear softmax
    classifier on ``pixels`` sampled pixels per image (``pixel_rows``), ``batch_size`` rows a step,
    and predicts every pixel of the test maps."""
    x, y = pixel_rows(f_tr, y_tr, pixels, seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    head = torch.nn.Linear(x.shape[1], sum(n_classes))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            logits = head(x[idx]).split(n_classes, dim=1)
            target = y[idx]
            loss = sum(F.cross_entropy(z, target[:, j], ignore_index=IGNORE) for j, z in enumerate(logits))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    s = y_tr.shape[-1]
    pred = torch.empty((len(f_te), len(n_classes), s, s), dtype=torch.uint8)
    with torch.no_grad():  # the same head as a 1x1 convolution on the standardised map, upsampled
        w = (head.weight / std).reshape(*head.weight.shape, 1, 1)
        b = head.bias - head.weight @ (mean / std)
        for lo in range(0, len(f_te), _PASS):
            z = _up(F.conv2d(f_te[lo : lo + _PASS], w, b), s)
            for j, zj in enumerate(z.split(n_classes, dim=1)):
                pred[lo : lo + _PASS, j] = zj.argmax(dim=1).to(torch.uint8)
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


def true_locations(
    box1: torch.Tensor, flip1: torch.Tensor, box2: torch.Tensor, flip2: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
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
    x = l1[:, None] + w1[:, None] * a  # image coordinates of the cell centres
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


def correspondence_accuracy(
    backbone: torch.nn.Module,
    ds: PackedDataset,
    indices: np.ndarray,
    spec: ViewSpec,
    seed: int,
    batch_size: int = _PASS,
) -> float:
    """`matched_views`'s accuracy over ``indices``, in batches (pooled over every view-1 cell)."""
    hits = total = 0.0
    for k, i in enumerate(range(0, len(indices), batch_size)):
        r = matched_views(backbone, np.asarray(ds.images[indices[i : i + batch_size]]), [spec, spec], seed + k)
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
    f_tr, f_te = feature_maps(backbone, ds, tr, size), feature_maps(backbone, ds, te, size)
    levels = ds.mask_levels
    k = [len(ds.mask_classes(lv)) for lv in levels]
    y_tr = torch.from_numpy(np.stack([ds.mask_array(lv, tr) for lv in levels], axis=1)).long()
    pred = dense_probe(
        f_tr, y_tr, f_te, k, cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["seed"], cfg["pixels"]
    ).numpy()
    rows = []
    for j, lv in enumerate(levels):
        conf = confusion(pred[:, j], ds.mask_array(lv, te), k[j])
        rows += [(lv, "miou", miou(conf)), (lv, "pixel_acc", pixel_accuracy(conf))]
    n = cfg["correspondence_images"]
    if n:
        spec = ViewSpec(**dict(views, size=size))
        rows.append((LABEL_FREE, CORRESPONDENCE, correspondence_accuracy(backbone, ds, te[:n], spec, cfg["seed"])))
    return pd.DataFrame(rows, columns=["level", "metric", "value"])
