"""Few labels (the quantity axis): a linear classifier on frozen features, fine-tuning of the whole
network, and the same network trained from scratch, all on the same n labelled images per class.

Labelled sets are nested and class-balanced (a prefix of the train split's seeded balanced order on
the finest labels), so 1 image per class is inside 5, inside 10, ... All three are trained on the
finest labels and scored at every level by mapping predictions up the hierarchy, as the linear
probe of the frozen evaluation.

Training (fine-tuning and from scratch): SGD with Nesterov momentum, per-step cosine decay to 0,
L2 weight decay on weights (not biases / BN), cross-entropy, views = random resized crop + flip of
the batch (no colour changes). Steps = max(min_steps, epochs x batches per epoch), so one labelled
image per class still gets a useful number of steps.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..augment import ViewSpec, make_views
from ..data.packed import PackedDataset
from ..data.subsets import balanced_order
from ..device import choose_precision
from ..errors import UserError
from ..hostsync import LossWatch, to_device
from ..names import ALL
from .features import Features, embed, probe_splits
from .frozen import choose_linear, level_accuracy, tidy

log = logging.getLogger("sslstudy.lowshot")


def labelled_indices(ds: PackedDataset, per_class: int | str, cfg: dict) -> np.ndarray:
    """Sorted fit indices (train less the val holdout, features.probe_splits): ``per_class`` images of
    every finest class (nested in ``per_class``), in the balanced order of seed eval.cluster_seed."""
    finest = ds.levels[-1]
    fit = probe_splits(ds, cfg)["fit"]
    order = balanced_order(
        ds.labels[ds.labels["index"].isin(fit)], cfg["cluster_seed"], stratify=finest, split="train", dataset=ds.path
    )
    if per_class == ALL:
        return np.sort(order)
    n = int(per_class) * ds.n_classes(finest)
    if n > len(order):
        raise UserError(
            f"{ds.path}: {per_class} labelled images per class need {n} train images but there are "
            f"{len(order)} (the val holdout excluded); lower quantity.labels in params"
        )
    return np.sort(order[:n])


def rows(
    ds: PackedDataset, pred_fine: np.ndarray, test: np.ndarray, metric: str, chosen: dict | None = None
) -> pd.DataFrame:
    acc = level_accuracy(ds, pred_fine, test)
    return tidy(
        [
            dict(level_index=i, level=lv, metric=metric, value=acc[lv], split="test", **(chosen or {}))
            for i, lv in enumerate(ds.levels)
        ]
    )


def frozen_linear(feats: Features, ds: PackedDataset, train: np.ndarray, cfg: dict, device="cpu") -> pd.DataFrame:
    """Multi-head linear probe on the cached frozen features of the labelled images, its head chosen
    on the val split, scored on the whole test split."""
    sp = probe_splits(ds, cfg)
    finest = ds.levels[-1]
    pred, chosen = choose_linear(
        (feats.take(train), ds.label_array(finest, train)),
        (feats.take(sp["val"]), ds.label_array(finest, sp["val"])),
        feats.take(sp["test"]),
        ds.n_classes(finest),
        cfg,
        device,
    )
    return rows(ds, pred, sp["test"], "linear", chosen)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, n_classes)
        self.epochs = 0  # complete passes over the labelled images in training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def train_classifier(
    backbone: nn.Module, ds: PackedDataset, train: np.ndarray, cfg: dict, size: int, seed: int, device=None
) -> Classifier:
    """Train backbone + a new linear head end to end on the finest labels of ``train``, on ``device``
    (default: the backbone's; the backbone is moved there): the network, the views, the labels and the
    step all run there, the images read on the host and copied over without waiting. The head is
    initialised on the CPU, so every device starts from the same weights. The forward pass runs in bf16
    autocast where ``cfg["precision"]`` (finetune.precision) auto finds native bf16, as pretraining does."""
    finest = ds.levels[-1]
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    dtype, what = choose_precision(dict(precision=cfg.get("precision", "auto")), device)
    log.info("fine-tuning on %d images on %s: %s", len(train), device, what)
    torch.manual_seed(seed)
    model = Classifier(backbone, ds.n_classes(finest)).to(device)
    y = to_device(torch.from_numpy(ds.label_array(finest, train)), device)
    bs = min(cfg["batch_size"], len(train))
    per_epoch = math.ceil(len(train) / bs)
    steps = max(cfg["min_steps"], cfg["epochs"] * per_epoch)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.SGD(
        [dict(params=decay, weight_decay=cfg["weight_decay"]), dict(params=rest, weight_decay=0.0)],
        lr=cfg["lr"],
        momentum=0.9,
        nesterov=True,
    )
    spec = ViewSpec(size=size, scale=cfg["scale"], hflip=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    gen = torch.Generator().manual_seed(seed)
    watch = LossWatch()
    model.train()
    perm = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        if len(perm) < bs:  # next epoch's shuffle
            perm = torch.cat([perm, torch.randperm(len(train), generator=gen)])
        pick, perm = perm[:bs], perm[bs:]
        rows = torch.from_numpy(np.sort(pick.numpy()))
        batch = to_device(torch.from_numpy(np.asarray(ds.images[train[rows.numpy()]])), device)
        views = make_views(batch, spec, gen)
        for g in opt.param_groups:
            g["lr"] = cfg["lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype is not None):
            logits = model(views)
        loss = nn.functional.cross_entropy(logits.float(), y[to_device(rows, device)])
        watch.add(loss, step)
        if watch.due(step) or step == steps - 1:
            _stop_if_diverged(watch, device, ds)
        _update(opt, loss)
    model.epochs = steps * bs // len(train)
    return model.eval()


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on loss (backward needs a real GPU: the fake-CUDA test replaces this)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _stop_if_diverged(watch: LossWatch, device, ds: PackedDataset) -> None:
    bad = watch.check(device)
    if bad is not None:
        raise UserError(f"{ds.path}: fine-tuning loss is {bad[1]} at step {bad[0]}; lower finetune.lr in params")


@torch.no_grad()
def predict(model: Classifier, ds: PackedDataset, indices: np.ndarray, size: int, batch_size: int = 512) -> np.ndarray:
    return (
        model.head(embed(model.backbone, ds.images, indices, size, batch_size=batch_size)).argmax(dim=1).cpu().numpy()
    )


def trained_rows(model: Classifier, ds: PackedDataset, size: int, metric: str) -> pd.DataFrame:
    test = ds.split_indices("test")
    return rows(ds, predict(model, ds, test, size), test, metric)
