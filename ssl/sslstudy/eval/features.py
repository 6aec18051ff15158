"""The evaluation's inputs: the device it runs on, the probe splits (fit / val / test) and the one
embedding of a checkpoint x dataset that every evaluation of that checkpoint reads.

The `evaluate` job embeds the train, val and test images once and writes them (names.EMBEDDINGS, an
uncompressed .npz: ``x`` (n, d) float16 unless a value overflows float16, then float32; ``index`` the
dataset rows, ascending); fusion and the few-label linear probe read that file instead of loading the
backbones again.

Splits: ``val`` is the dataset's own val split when it has one; otherwise the first
``eval.val_fraction`` of the train split's class-balanced seeded order (finest labels, seed
``eval.cluster_seed``), so every class is held out in proportion. ``fit`` is the rest of train: the
probes train on it, choose their hyper-parameters on val and report test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..augment import eval_view
from ..data.packed import PackedDataset
from ..data.subsets import balanced_order
from ..device import inference_autocast
from ..errors import UserError

log = logging.getLogger("sslstudy.eval")


def eval_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when torch sees one, else the CPU; ``cuda``/``cpu`` as asked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device on this machine; use --device auto or cpu")
    if name not in ("cuda", "cpu"):
        raise UserError(f"--device {name}: use auto, cuda or cpu")
    return torch.device(name)


def probe_splits(ds: PackedDataset, cfg: dict) -> dict[str, np.ndarray]:
    """Sorted dataset indices of fit (what the probes train on), val (what chooses their
    hyper-parameters) and test (what they report)."""
    train, test = ds.split_indices("train"), ds.split_indices("test")
    val = ds.split_indices("val")
    if len(val):
        return dict(fit=train, val=val, test=test)
    order = balanced_order(ds.labels, cfg["cluster_seed"], stratify=ds.levels[-1], split="train", dataset=ds.path)
    n_val = int(round(cfg["val_fraction"] * len(order)))
    if not 0 < n_val < len(order):
        raise UserError(
            f"{ds.path}: eval.val_fraction={cfg['val_fraction']} of {len(order)} train images holds out "
            f"{n_val}; pick a fraction that leaves images on both sides"
        )
    val = np.sort(order[:n_val])
    return dict(fit=np.setdiff1d(train, val), val=val, test=test)


class Features:
    """Embeddings of dataset rows ``index`` (ascending), looked up by dataset index; model_config: the
    hash of the embedded model's config (sslstudy.provenance; "" when not known)."""

    def __init__(self, x: np.ndarray, index: np.ndarray, model_config: str = ""):
        self.x, self.index, self.model_config = x, np.asarray(index, dtype=np.int64), model_config

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 features of dataset rows ``rows`` (each must be in the cache)."""
        pos = np.searchsorted(self.index, rows)
        if len(rows) and (pos.max() >= len(self.index) or not np.array_equal(self.index[pos], rows)):
            raise UserError("embedding cache lacks some requested rows; delete it and re-run its evaluate job")
        return self.x[pos].astype(np.float32)

    def save(self, path: str | Path) -> None:
        with atomic_path(path, self.x.nbytes + self.index.nbytes) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=self.x, index=self.index, model_config=np.str_(self.model_config))

    @classmethod
    def load(cls, path: str | Path) -> "Features":
        try:
            with np.load(path) as z:
                return cls(z["x"], z["index"], str(z["model_config"]) if "model_config" in z.files else "")
        except (OSError, ValueError, KeyError) as e:
            raise UserError(
                f"{path}: unreadable embedding cache ({type(e).__name__}); delete it and re-run its evaluate job"
            ) from None


@torch.no_grad()
def embed(
    encoder: torch.nn.Module,
    images,
    rows: np.ndarray,
    size: int,
    device: torch.device | None = None,
    batch_size: int = 256,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one embedding of the project: encoder in eval mode (its mode restored after) on the eval view
    of images[rows] -> (len(rows), D), on the encoder's device (or ``device``), batch by batch; no
    collective, no random numbers. Inputs channels_last; on CUDA in bf16 autocast, on the CPU in
    float32. Without ``out`` the result is float32 on the device; with ``out`` (any device and dtype,
    e.g. the evaluation cache's float16 host array) each batch is copied into it and ``out`` is
    returned, so nothing larger than the features is held."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    chunks = []
    for i in range(0, len(rows), batch_size):
        x = eval_view(torch.from_numpy(np.asarray(images[rows[i : i + batch_size]])).to(device), size)
        x = x.contiguous(memory_format=torch.channels_last)  # on the CPU the same numbers as contiguous inputs
        with torch.autocast(**inference_autocast(device)):
            z = encoder(x).float()
        if out is None:
            chunks.append(z)
        else:
            out[i : i + len(z)].copy_(z)
    encoder.train(was_training)
    return out if out is not None else torch.cat(chunks)


def embed_dataset(
    backbone: torch.nn.Module,
    ds: PackedDataset,
    size: int,
    batch_size: int,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> Features:
    """The backbone (on its device) on the eval view of every image of ``splits``, streamed into
    one host array: float16 when every value fits, else float32."""
    rows = np.sort(np.concatenate([ds.split_indices(s) for s in splits]))
    for dtype in (torch.float16, torch.float32):
        out = torch.empty(len(rows), backbone.out_dim, dtype=dtype)
        out = embed(backbone, ds.images, rows, size, batch_size=batch_size, out=out)
        if torch.isfinite(out).all():
            return Features(out.numpy(), rows)
        if dtype == torch.float16:  # a value beyond float16's range (or a non-finite embedding)
            log.info("embeddings exceed the float16 range; cached as float32")
    raise UserError(f"{ds.path}: the backbone's embeddings are not finite; its checkpoint is broken")
