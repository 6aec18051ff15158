"""One seaborn figure per section of the report; each returns its PNG bytes (None when no data)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..axes import SUPERVISED  # noqa: E402
from .tables import finest  # noqa: E402

METRIC_NAMES = {"knn": "kNN accuracy", "linear": "linear accuracy", "nmi": "k-means NMI", "ari": "k-means ARI"}


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def accuracy_per_level(df: pd.DataFrame, name_runs: bool = False) -> bytes:
    """name_runs: title each row with its run even when there is one (a suspect run's id carries its flag)."""
    d = df.assign(metric=df["metric"].map(METRIC_NAMES)).sort_values(["level_index"])
    g = sns.catplot(data=d, x="level", y="value", hue="weights", col="metric", row="run", kind="bar",
                    height=2.6, aspect=0.9, hue_order=["random", "pretrained"], palette=["#bbbbbb", "#2a6fb0"],
                    col_order=list(METRIC_NAMES.values()), errorbar=None)
    g.set_titles("{col_name}" if d["run"].nunique() == 1 and not name_runs else "{row_name}\n{col_name}")
    g.set(ylim=(0, 1), xlabel="label level (coarse → fine)", ylabel="")
    return png(g.figure)


def quantity(d: pd.DataFrame) -> bytes | None:
    """Finest-level accuracy vs pretraining images, one line per labelled count; supervised dashed."""
    d = finest(d)
    if d.empty:
        return None
    ssl = d[d["mode"] != "supervised"]
    sup = d[d["mode"] == "supervised"]
    rows = sorted(set(zip(ssl["method"], ssl["domain"])))
    cols = [m for m in ("linear", "finetune") if m in set(ssl["mode"])]
    labels = sorted(d["labels"].unique(), key=lambda t: (t == "lall", int(t[1:]) if t[1:].isdigit() else 0))
    colors = dict(zip(labels, sns.color_palette("viridis", len(labels))))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.2 * len(cols), 3.0 * len(rows)), squeeze=False, sharey=True)
    for i, (method, domain) in enumerate(rows):
        for j, mode in enumerate(cols):
            ax = axes[i, j]
            part = ssl[(ssl["method"] == method) & (ssl["domain"] == domain) & (ssl["mode"] == mode)]
            for lab in labels:
                line = part[part["labels"] == lab].groupby("pretrain_images")["value"].mean()
                if len(line):
                    ax.plot(line.index, line.values, "o-", color=colors[lab], label=f"{lab[1:]} / class")
                base = sup[(sup["labels"] == lab) & (sup["domain"] == domain)]
                if len(base):
                    ax.axhline(base["value"].mean(), color=colors[lab], ls="--", lw=1.2)
            ax.set_xscale("log")
            ax.set_title(f"{method} on {domain}: {'frozen linear' if mode == 'linear' else 'fine-tuned'}", fontsize=10)
            ax.set_xlabel("pretraining images")
            ax.set_ylabel("top-1, finest level" if j == 0 else "")
    handles, names = axes[0, 0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="k", ls="--"))
    names.append("supervised from scratch")
    fig.legend(handles, names, loc="upper left", bbox_to_anchor=(1.0, 0.95), title="labelled images")
    fig.tight_layout()
    return png(fig)


def domain_heatmap(d: pd.DataFrame) -> bytes | None:
    d = finest(d)
    if d.empty:
        return None
    methods = sorted(d["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(1.2 + 1.3 * d["eval_domain"].nunique() * len(methods), 1 + 0.55 * d["pretrain_domain"].nunique()), squeeze=False)
    for ax, m in zip(axes[0], methods):
        mat = d[d["method"] == m].pivot_table(index="pretrain_domain", columns="eval_domain", values="value")
        pooled = [r for r in mat.index if "+" in r]
        mat = mat.loc[[r for r in mat.index if r not in pooled] + pooled]
        sns.heatmap(mat, annot=True, fmt=".2f", cmap="mako", ax=ax, cbar=False, vmin=0)
        ax.set_title(m)
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("pretrained on")
    fig.tight_layout()
    return png(fig)


def quality_drop(d: pd.DataFrame) -> bytes | None:
    d = d[d["metric"] == "linear"] if not d.empty else d
    if d.empty:
        return None
    g = sns.catplot(data=d, x="quality", y="drop", hue="method", col="level", row="domain", kind="bar", errorbar=None,
                    height=2.8, aspect=1.3, col_order=list(dict.fromkeys(d.sort_values("level_index")["level"])))
    g.set_titles("{row_name}, {col_name} level")
    g.set(xlabel="pretraining corruption", ylabel="linear accuracy − clean")
    for ax in g.axes.flat:
        ax.axhline(0, color="k", lw=0.8)
        ax.tick_params(axis="x", rotation=45)
    return png(g.figure)


def granularity(d: pd.DataFrame) -> bytes | None:
    if d.empty:
        return None
    d = d.assign(metric=d["metric"].map(METRIC_NAMES)).sort_values("level_index")
    methods = sorted(m for m in d["method"].unique() if m != SUPERVISED) + ([SUPERVISED] if SUPERVISED in set(d["method"]) else [])
    dashes = {m: (4, 2) if m == SUPERVISED else "" for m in methods}
    g = sns.relplot(data=d, x="level", y="value", hue="method", style="method", dashes=dashes, markers=True, col="domain",
                    row="metric", kind="line", height=2.8, aspect=1.1, hue_order=methods, style_order=methods)
    g.set_titles("{col_name}, {row_name}")
    g.set(ylim=(0, 1), xlabel="label level (coarse → fine)", ylabel="top-1")
    return png(g.figure)


def fusion(table: pd.DataFrame) -> bytes | None:
    if table.empty:
        return None
    d = table.melt(id_vars=["pair", "eval_domain"], value_vars=["member a", "member b", "fused"], var_name="model")
    d["pair"] = d["pair"].str.replace(" + ", "\n+ ", regex=False) + "\non " + d["eval_domain"]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * d["pair"].nunique()), 3.4))
    sns.barplot(data=d, x="pair", y="value", hue="model", ax=ax, palette=["#9ecae1", "#fdae6b", "#31a354"])
    ax.set(xlabel="", ylabel="linear top-1, finest level")
    ax.tick_params(axis="x", labelsize=8)
    return png(fig)


def clustering(d: pd.DataFrame) -> bytes | None:
    if d.empty:
        return None
    d = d.assign(metric=d["metric"].map(METRIC_NAMES)).sort_values(["level_index", "epoch"])
    d["model"] = d["domain"] + " " + d["subset"] + " " + d["quality"] + " → " + d["eval_domain"]
    g = sns.relplot(data=d, x="epoch", y="value", hue="method", units="model", estimator=None, col="level", row="metric",
                    kind="line", marker="o", height=2.6, aspect=1.2, alpha=0.7,
                    col_order=list(dict.fromkeys(d["level"])))
    g.set_titles("{row_name}, {col_name} level")
    g.set(xlabel="pretraining epoch", ylabel="")
    return png(g.figure)


def loss(curves: pd.DataFrame, flagged: int = 0) -> bytes | None:
    """flagged: how many runs are suspect (their ids, in the legend, carry the flag; without a legend the title counts them)."""
    if curves.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.lineplot(data=curves, x="epoch", y="loss", hue="run", ax=ax, legend=curves["run"].nunique() <= 12)
    if ax.get_legend():
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), fontsize=7)
    ax.set_title("pretraining loss" + (f" ({flagged} flagged run(s), see the warnings)" if flagged and not ax.get_legend() else ""))
    return png(fig)
