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
from ..augment import MEAN, STD, ViewSpec  # noqa: E402
from ..eval.dense import matched_views, near, require_map  # noqa: E402


def correspondence_figure(
    view1: torch.Tensor,
    view2: torch.Tensor,
    match: torch.Tensor,
    grid: tuple[int, int],
    truth: torch.Tensor | None = None,
    title: str = "",
) -> bytes:
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
        ok = near(match[j : j + 1], truth[j : j + 1], gw)[0] if truth is not None else None
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
    from ..checkpoint import load_backbone
    from ..data.packed import load_dataset

    backbone, cfg = load_backbone(checkpoint)
    require_map(backbone, str(checkpoint))
    ds = load_dataset(cfg["data"]["dataset"])
    images = np.asarray(ds.images[ds.split_indices("test")[:n_images]])
    return matched_views(backbone, images, [ViewSpec(**v) for v in cfg["views"][:2]], seed)


def write_matches_figure(checkpoint: Path, out: Path, n_images: int = 6, seed: int = 0) -> float:
    """The figure of `run_matches` written to `out` (atomically); returns its accuracy."""
    r = run_matches(checkpoint, n_images, seed)
    title = (
        f"{checkpoint}\nview-1 cell -> view-2 cell of most similar backbone feature; {100 * r['accuracy']:.0f}%\n"
        f"within one cell of the true location (green); red: further; grey: outside view 2"
    )
    write_bytes(out, correspondence_figure(r["view1"], r["view2"], r["match"], r["grid"], r["truth"], title))
    return r["accuracy"]
