"""DenseCL's correspondences drawn: each location of view 1 joined to the location of view 2 whose
backbone feature is most similar (cosine), coloured by whether it is where the crops say it is."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..atomic import write_bytes  # noqa: E402
from ..augment import MEAN, STD, ViewSpec, apply_params, sample_params, to_float  # noqa: E402
from ..errors import UserError  # noqa: E402
from ..methods.densecl import match_locations  # noqa: E402


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


def correspondence_figure(view1: torch.Tensor, view2: torch.Tensor, match: torch.Tensor, grid: tuple[int, int],
                          truth: torch.Tensor | None = None, title: str = "") -> bytes:
    """PNG of N view pairs side by side, each view-1 cell joined to its matched view-2 cell.

    view*: (N, 3, s, s) normalised views; match: (N, gh*gw) from `match_locations`; truth: the
    same shape from `true_locations` (lines then green when within one cell of it, red when not,
    grey when the point is outside view 2)."""
    n, s = view1.shape[0], view1.shape[-1]
    gh, gw = grid
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    show = lambda v: (v.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # noqa: E731
    centre = lambda i: ((i % gw + 0.5) * s / gw - 0.5, (i // gw + 0.5) * s / gh - 0.5)  # noqa: E731
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for j, ax in enumerate(axes.flat[:n]):
        ax.imshow(np.concatenate([show(view1[j]), np.ones((s, 2, 3)), show(view2[j])], axis=1))
        ok = near(match[j:j + 1], truth[j:j + 1], gw)[0] if truth is not None else None
        for i in range(gh * gw):
            (x1, y1), (x2, y2) = centre(i), centre(int(match[j, i]))
            colour = "yellow" if truth is None else "grey" if truth[j, i] < 0 else "lime" if ok[i] else "red"
            ax.plot([x1, x2 + s + 2], [y1, y2], color=colour, lw=0.8, marker=".", ms=2)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@torch.no_grad()
def run_matches(checkpoint: Path, n_images: int = 6, seed: int = 0) -> dict:
    """Two random views (the run's view specs) of the first `n_images` test images, their backbone
    maps under the checkpoint's weights, and the matches -> dict for `correspondence_figure`, plus
    `accuracy`: the fraction of view-1 cells inside view 2 matched within one cell of the truth."""
    from ..data.packed import load_dataset
    from ..train import load_backbone

    backbone, cfg = load_backbone(checkpoint)
    if not hasattr(backbone, "forward_map"):
        raise UserError(f"{checkpoint}: backbone {cfg['backbone']['arch']} has no feature map")
    ds = load_dataset(cfg["data"]["dataset"])
    idx = ds.split_indices("test")[:n_images]
    x = to_float(torch.from_numpy(np.asarray(ds.images[idx])))
    g = torch.Generator().manual_seed(seed)
    views, params = [], []
    for v in cfg["views"][:2]:
        spec = ViewSpec(**v)
        p = sample_params(spec, x.shape[0], x.shape[-2], x.shape[-1], g)
        views.append(apply_params(x, p, spec))
        params.append(p)
    f1, f2 = backbone.forward_map(views[0]), backbone.forward_map(views[1])
    grid = tuple(f1.shape[-2:])
    match = match_locations(f1, f2)
    truth = true_locations(params[0]["box"], params[0]["flip"], params[1]["box"], params[1]["flip"], grid)
    inside = truth >= 0
    acc = float(near(match, truth, grid[1]).sum() / inside.sum().clamp(min=1))
    return dict(view1=views[0], view2=views[1], match=match, grid=grid, truth=truth, accuracy=acc)


def write_matches_figure(checkpoint: Path, out: Path, n_images: int = 6, seed: int = 0) -> float:
    """The figure of `run_matches` written to `out` (atomically); returns its accuracy."""
    r = run_matches(checkpoint, n_images, seed)
    title = (f"{checkpoint}\nview-1 cell -> view-2 cell of most similar backbone feature; {100 * r['accuracy']:.0f}%\n"
             f"within one cell of the true location (green); red: further; grey: outside view 2")
    write_bytes(out, correspondence_figure(r["view1"], r["view2"], r["match"], r["grid"], r["truth"], title))
    return r["accuracy"]
