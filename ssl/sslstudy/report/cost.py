"""The report's Cost section: what `sslstudy preflight` estimated before the study ran (its table,
results/preflight.csv: sslstudy.cost) per method, per axis and on disk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def summaries(df: pd.DataFrame) -> dict:
    """The preflight table -> per method (pretraining), per axis and disk tables, and the total GPU-hours."""
    jobs = df[df["kind"] != "disk"]
    pre = jobs[jobs["kind"] == "pretrain"]
    per_method = pre.groupby("method", sort=False).agg(
        runs=("jobs", "sum"),
        peak_gb_per_gpu=("peak_gb", "max"),
        per_gpu_batch=("per_gpu_batch", "max"),
        gpus=("gpus", "max"),
        gflop_per_image=("gflop_per_image", "max"),
        images_per_run=("images_per_job", "max"),
        gpu_hours=("gpu_hours", "sum"),
    )
    per_axis = jobs.pivot_table(index="axis", columns="kind", values="gpu_hours", aggfunc="sum", sort=False)
    per_axis["total"] = per_axis.sum(axis=1)
    disk = df[df["kind"] == "disk"][["method", "disk_gb"]].rename(columns={"method": "what"})
    return dict(per_method=per_method, per_axis=per_axis, disk=disk, total=float(jobs["gpu_hours"].sum()))


def section(page, path: Path | None) -> dict | None:
    """The section's tables (each linked to its CSV), or None without a preflight table."""
    if path is None or not Path(path).is_file():
        return None
    s = summaries(pd.read_csv(path))
    return dict(
        total=f"{s['total']:,.1f}",
        per_method=page.linked("cost_per_method", s["per_method"].reset_index(), s["per_method"], digits=1, index=True),
        per_axis=page.linked("cost_per_axis", s["per_axis"].reset_index(), s["per_axis"], digits=1, index=True),
        disk=page.linked("cost_disk", s["disk"], digits=1),
    )
