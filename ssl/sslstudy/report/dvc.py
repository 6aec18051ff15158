"""What DVC reads from the report folder: one small wide CSV per plot of dvc.yaml's `plots:` (a row per
level or epoch, a column per method; `dvc plots show` / `dvc plots diff` draw one line per column) and
headline.json for `metrics:` (`dvc exp show`). All of them are means over seeds of the study's
eight-method comparison: the setting (domain, subset, quality) that the most methods pretrained on."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..atomic import write_bytes
from ..names import HEADLINE, PLOT_FILE
from .figures import methods

SETTING = ["domain", "subset", "quality"]


def comparison(base: pd.DataFrame) -> pd.DataFrame:
    """base's rows of its main setting (most methods; ties: the first in sorted order)."""
    if base.empty:
        return base
    n = base.groupby(SETTING)["method"].nunique()
    main = n[n == n.max()].sort_index().index[0]
    return base[(base[SETTING] == pd.Series(main, index=SETTING)).all(axis=1)]


def _wide(d: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    """Mean over seeds per index x method, methods as columns in the report's order."""
    w = d.groupby(index + ["method", "seed"])["value"].mean().groupby(index + ["method"]).mean().unstack("method")
    return w[methods(w.columns)].reset_index().rename_axis(columns=None)


def per_level(base: pd.DataFrame, metric: str) -> pd.DataFrame:
    d = base[(base["weights"] == "pretrained") & (base["metric"] == metric)]
    return _wide(d, ["level_index", "level"]) if not d.empty else pd.DataFrame(columns=["level_index", "level"])


def loss_per_epoch(curves: pd.DataFrame, runs) -> pd.DataFrame:
    """Each run's loss over its first epoch's (the methods' scales differ by orders of magnitude)."""
    d = curves[curves["run"].isin(set(runs))] if not curves.empty else curves
    if d.empty:
        return pd.DataFrame(columns=["epoch"])
    d = d.sort_values("epoch")
    first = d.groupby("run")["loss"].transform("first")
    d = d.assign(
        value=d["loss"] / first, method=d["run"].str.split("/").str[0], seed=d["run"].str.rsplit("seed", n=1).str[1]
    )
    return _wide(d, ["epoch"])


def nmi_per_epoch(clusters: pd.DataFrame, runs) -> pd.DataFrame:
    """k-means NMI at the coarsest level on the pretraining domain, per checkpoint epoch."""
    d = clusters[clusters["run"].isin(set(runs)) & (clusters["metric"] == "nmi")] if not clusters.empty else clusters
    d = d[(d["eval_domain"] == d["domain"]) & (d["level_index"] == d["level_index"].min())] if not d.empty else d
    return _wide(d, ["epoch"]) if not d.empty else pd.DataFrame(columns=["epoch"])


def headline(base: pd.DataFrame) -> dict:
    """method -> {knn_<level>, linear_<level>: mean over seeds, pretrained; seeds: n}."""
    out: dict = {}
    d = base[base["weights"] == "pretrained"]
    for metric in ("knn", "linear"):
        w = per_level(base, metric)
        for m in w.columns[2:]:
            out.setdefault(m, {}).update({f"{metric}_{r.level}": round(float(r[m]), 4) for _, r in w.iterrows()})
    for m, n in d.groupby("method")["seed"].nunique().items():
        out[m]["seeds"] = int(n)
    return out


def write(out_dir: Path, base: pd.DataFrame, curves: pd.DataFrame, clusters: pd.DataFrame) -> None:
    """plots/<name>.csv and headline.json under out_dir; base: the runs with random weights on their own domain."""
    d = comparison(base)
    runs = d["run"].unique() if not d.empty else []
    tables = dict(
        knn_per_level=per_level(d, "knn"),
        linear_per_level=per_level(d, "linear"),
        loss_per_epoch=loss_per_epoch(curves, runs),
        nmi_per_epoch=nmi_per_epoch(clusters, runs),
    )
    for name, t in tables.items():
        write_bytes(out_dir / PLOT_FILE.format(name=name), t.to_csv(index=False, float_format="%.4f").encode())
    write_bytes(out_dir / HEADLINE, (json.dumps(headline(d), indent=2) + "\n").encode())
