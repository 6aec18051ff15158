"""One matplotlib figure per section of the report, drawn from per-seed tidy rows: every mark is the
mean over seeds with its 95% Student t interval (sslstudy.stats) and each figure says n; with one
seed it says "1 seed, no interval" and draws none. Each function returns a Drawn (PNG and SVG
bytes), or None when there is no data.

One order and one colour per method in every figure (ORDER, colour). Figures are sized for the
report's 1150 px column at 100 dpi; titles are method names (run ids are in the tables)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .. import stats  # noqa: E402
from ..axes import SUPERVISED  # noqa: E402
from .tables import finest  # noqa: E402

METRIC_NAMES = {"knn": "kNN accuracy", "linear": "linear accuracy", "nmi": "k-means NMI", "ari": "k-means ARI"}
# the overview's panels; ARI (near zero at these sizes, and ranked as NMI) stays in the tables
OVERVIEW = ("knn", "linear", "nmi")
WIDTH = 11.5  # inches at 100 dpi: the page's column
ORDER = ("simclr", "moco", "byol", "swav", "barlow", "densecl", "deepcluster", "pcl", SUPERVISED)
_TAB = sns.color_palette("tab10", 10)
PALETTE = {m: _TAB[i] for m, i in zip(ORDER[:-1], (0, 1, 2, 3, 4, 5, 6, 8, 9))} | {SUPERVISED: (0.2, 0.2, 0.2)}
_EXTRA = sns.color_palette("Dark2", 8)  # methods outside ORDER, in sorted order
RANDOM = "#999999"  # random weights
SUSPECT = "//"  # hatch of a suspect run's bar


@dataclass(frozen=True)
class Drawn:
    png: bytes
    svg: bytes


def methods(values) -> list[str]:
    """The methods among values in the report's order (others after, sorted)."""
    present = set(values)
    return [m for m in ORDER if m in present] + sorted(present - set(ORDER))


def colour(method: str, among=()) -> tuple:
    """method's colour in every figure (among: the methods of this figure, to number unknown ones)."""
    if method in PALETTE:
        return PALETTE[method]
    others = sorted((set(among) - set(ORDER)) | {method})
    return _EXTRA[others.index(method) % len(_EXTRA)]


def drawn(fig) -> Drawn:
    out = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "sslstudy"}):
            fig.savefig(
                buf, format=fmt, dpi=100, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None
            )
        out.append(buf.getvalue())
    plt.close(fig)
    return Drawn(*out)


def summary(d: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Mean, 95% t interval and n over seeds per group of by (rows of one seed averaged first)."""
    per_seed = d.groupby(by + ["seed"], as_index=False, dropna=False)[value].mean()
    return stats.summarise(per_seed, by, value=value)


def seeds_note(n: pd.Series) -> str:
    """What the marks of a figure are, from the n of its groups."""
    lo, hi = int(n.min()), int(n.max())
    if hi <= 1:
        return "1 seed, no interval"
    seeds = f"{lo} seeds" if lo == hi else f"{lo}–{hi} seeds"
    return f"mean of {seeds}, 95% Student t interval" + (" (none where 1 seed)" if lo == 1 else "")


def _errorbars(ax, x, s: pd.DataFrame, **kw) -> None:
    """The intervals of s (mean, low, high, n) at x; none where n < 2 (1 seed: no interval)."""
    ok = (s["n"] >= 2).to_numpy()
    if ok.any():
        m, lo, hi = (s[c].to_numpy()[ok] for c in ("mean", "low", "high"))
        ax.errorbar(
            np.asarray(x)[ok],
            m,
            yerr=np.vstack([m - lo, hi - m]),
            fmt="none",
            **{"ecolor": "k", "elinewidth": 0.8, "capsize": 1.5, **kw},
        )


def _band(ax, x, s: pd.DataFrame, c, **kw) -> None:
    ok = s["n"] >= 2
    if ok.any():
        ax.fill_between(np.asarray(x)[ok.to_numpy()], s["low"][ok], s["high"][ok], color=c, alpha=0.18, lw=0, **kw)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _note(fig, text: str) -> None:
    fig.text(0.0, 1.0, text, ha="left", va="bottom", fontsize=9, color="#444")


def _setting(df: pd.DataFrame) -> pd.Series:
    return df["domain"] + " " + df["subset"] + " " + df["quality"]


def _levels(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df.sort_values("level_index")["level"]))


def _flagged_methods(d: pd.DataFrame, flags: dict[str, str]) -> dict[tuple, str]:
    """(setting, method) -> the flags of its suspect runs ("collapsed", ...)."""
    out: dict[tuple, set] = {}
    for r in d[d["run"].isin(flags)][["setting", "method", "run"]].drop_duplicates().itertuples():
        out.setdefault((r.setting, r.method), set()).update(flags[r.run].split(", "))
    return {k: ", ".join(sorted(v)) for k, v in out.items()}


def accuracy_per_level(df: pd.DataFrame, flags: dict[str, str] | None = None) -> Drawn | None:
    """The overview: per setting (row) and metric (column), a bar per method at each level (pretrained)
    and a grey tick at its random weights; bars of suspect runs hatched and named in the legend."""
    flags = flags or {}
    d = df[df["metric"].isin(OVERVIEW)] if not df.empty else df
    if d.empty:
        return None
    d = d.assign(setting=_setting)
    s = summary(d, ["setting", "method", "weights", "metric", "level_index", "level"])
    settings, ms, levels = sorted(s["setting"].unique()), methods(s["method"]), _levels(s)
    metrics = [m for m in OVERVIEW if m in set(s["metric"])]
    bad = _flagged_methods(d, flags)
    fig, axes = plt.subplots(len(settings), len(metrics), figsize=(WIDTH, 2.9 * len(settings) + 0.6), squeeze=False)
    width = 0.8 / len(ms)
    for i, setting in enumerate(settings):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            part = s[(s["setting"] == setting) & (s["metric"] == metric)]
            for k, m in enumerate(ms):
                x = np.arange(len(levels)) - 0.4 + width * (k + 0.5)
                for weights in ("pretrained", "random"):
                    w = part[(part["method"] == m) & (part["weights"] == weights)].set_index("level").reindex(levels)
                    if w["mean"].isna().all():
                        continue
                    if weights == "pretrained":
                        ax.bar(
                            x,
                            w["mean"],
                            width * 0.92,
                            color=colour(m, ms),
                            hatch=SUSPECT if (setting, m) in bad else None,
                            edgecolor="white" if (setting, m) in bad else None,
                            linewidth=0,
                        )
                        _errorbars(ax, x, w.fillna({"n": 0}))
                    else:
                        ax.hlines(w["mean"], x - width / 2, x + width / 2, color="k", lw=1.4)
            ax.set_xticks(range(len(levels)), levels)
            ax.set_ylim(0, 1)
            ax.set_xlabel("label level (coarse → fine)")
            ax.set_ylabel(METRIC_NAMES[metric])
            ax.set_title(METRIC_NAMES[metric] + (f" · {setting}" if len(settings) > 1 else ""), fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour(m, ms)) for m in ms]
    labels = list(ms)
    for (setting, m), flag in sorted(bad.items()):
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=colour(m, ms), hatch=SUSPECT, edgecolor="white"))
        labels.append(f"{m}{' · ' + setting if len(settings) > 1 else ''}: {flag}, see warnings")
    handles.append(plt.Line2D([], [], color="k", lw=1.4))
    labels.append("random weights")
    fig.tight_layout(rect=(0, 0.07 / len(settings), 1, 1))
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.07 / len(settings)),
        ncol=min(len(labels), 10),
        frameon=False,
        columnspacing=1.2,
        fontsize=9,
    )
    _note(fig, f"Bars: pretrained, {seeds_note(s['n'])}. Black tick: the same backbone's random weights.")
    return drawn(fig)


def quantity(d: pd.DataFrame) -> Drawn | None:
    """Finest-level accuracy vs pretraining images, one line per labelled count; supervised dashed."""
    d = finest(d)
    if d.empty:
        return None
    ssl = d[d["mode"] != "supervised"]
    sup = summary(d[d["mode"] == "supervised"], ["domain", "labels"])
    rows = sorted(set(zip(ssl["method"], ssl["domain"])), key=lambda t: (methods(ssl["method"]).index(t[0]), t[1]))
    cols = [m for m in ("linear", "finetune") if m in set(ssl["mode"])]
    labels = sorted(d["labels"].unique(), key=lambda t: (t == "lall", int(t[1:]) if t[1:].isdigit() else 0))
    colors = dict(zip(labels, sns.color_palette("viridis", len(labels))))
    s = summary(ssl, ["method", "domain", "mode", "labels", "pretrain_images"])
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(WIDTH * 0.75, 3.0 * len(rows) + 0.4), squeeze=False, sharey=True
    )
    for i, (method, domain) in enumerate(rows):
        for j, mode in enumerate(cols):
            ax = axes[i, j]
            part = s[(s["method"] == method) & (s["domain"] == domain) & (s["mode"] == mode)]
            for lab in labels:
                line = part[part["labels"] == lab].sort_values("pretrain_images")
                if len(line):
                    ax.plot(line["pretrain_images"], line["mean"], "o-", color=colors[lab], label=f"{lab[1:]} / class")
                    _errorbars(ax, line["pretrain_images"], line, ecolor=colors[lab], capsize=2)
                base = sup[(sup["labels"] == lab) & (sup["domain"] == domain)]
                if len(base):
                    r = base.iloc[0]
                    ax.axhline(r["mean"], color=colors[lab], ls="--", lw=1.2)
                    if r["n"] >= 2:
                        ax.axhspan(r["low"], r["high"], color=colors[lab], alpha=0.1, lw=0)
            ax.set_xscale("log")
            ax.set_title(f"{method} on {domain}: {'frozen linear' if mode == 'linear' else 'fine-tuned'}", fontsize=10)
            ax.set_xlabel("pretraining images")
            ax.set_ylabel("top-1, finest level")
    handles, names = axes[0, 0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="k", ls="--"))
    names.append("supervised from scratch")
    fig.tight_layout()
    fig.legend(handles, names, loc="upper left", bbox_to_anchor=(1.0, 0.95), title="labelled images", frameon=False)
    _note(fig, _cap(seeds_note(pd.concat([s["n"], sup["n"]]))) + ".")
    return drawn(fig)


def domain_heatmap(d: pd.DataFrame) -> Drawn | None:
    """Per method a heatmap, pretraining domain (rows, pools last) x evaluation domain: mean ± half-width."""
    d = finest(d)
    if d.empty:
        return None
    s = summary(d, ["method", "pretrain_domain", "eval_domain"])
    ms = methods(s["method"])
    n_eval, n_pre = s["eval_domain"].nunique(), s["pretrain_domain"].nunique()
    fig, axes = plt.subplots(
        1, len(ms), figsize=(min(WIDTH, 0.8 + 1.5 * n_eval * len(ms)), 1.4 + 0.6 * n_pre), squeeze=False
    )
    for ax, m in zip(axes[0], ms):
        part = s[s["method"] == m]
        mat = part.pivot_table(index="pretrain_domain", columns="eval_domain", values="mean")
        half = part.assign(h=(part["high"] - part["low"]) / 2).pivot_table(
            index="pretrain_domain", columns="eval_domain", values="h", dropna=False
        )
        pooled = [r for r in mat.index if "+" in r]
        mat = mat.loc[[r for r in mat.index if r not in pooled] + pooled]
        half = half.reindex(index=mat.index, columns=mat.columns)
        text = mat.map(lambda v: f"{v:.2f}") + half.map(lambda h: "" if pd.isna(h) else f"\n±{h:.2f}")
        sns.heatmap(mat, annot=text, fmt="", cmap="mako", ax=ax, cbar=False, vmin=0, vmax=1, annot_kws=dict(fontsize=8))
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("pretrained on")
        ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    _note(fig, f"Linear top-1, finest level: {seeds_note(s['n'])}.")
    return drawn(fig)


def quality_drop(d: pd.DataFrame) -> Drawn | None:
    """Per domain (row) and level (column): linear accuracy minus the clean twin's, per corruption."""
    d = d[d["metric"] == "linear"] if not d.empty else d
    if d.empty:
        return None
    tags = list(dict.fromkeys(d["quality"]))  # the table's order: corruption, then strength
    s = summary(d, ["domain", "method", "level_index", "level", "quality"], value="drop")
    domains, levels, ms = sorted(s["domain"].unique()), _levels(s), methods(s["method"])
    fig, axes = plt.subplots(
        len(domains), len(levels), figsize=(WIDTH, 3.0 * len(domains) + 0.6), squeeze=False, sharey=True
    )
    width = 0.8 / len(ms)
    for i, dom in enumerate(domains):
        for j, lv in enumerate(levels):
            ax = axes[i, j]
            for k, m in enumerate(ms):
                part = (
                    s[(s["domain"] == dom) & (s["level"] == lv) & (s["method"] == m)].set_index("quality").reindex(tags)
                )
                x = np.arange(len(tags)) - 0.4 + width * (k + 0.5)
                ax.bar(x, part["mean"], width * 0.92, color=colour(m, ms), label=m)
                _errorbars(ax, x, part.fillna({"n": 0}))
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xticks(range(len(tags)), tags, rotation=90, fontsize=8)
            ax.set_title(f"{dom}, {lv} level", fontsize=10)
            ax.set_xlabel("pretraining corruption")
            ax.set_ylabel("linear accuracy − clean")
    fig.tight_layout()
    if len(ms) > 1:
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    _note(fig, f"Paired on seed with the clean twin: {seeds_note(s['n'])}.")
    return drawn(fig)


def granularity(d: pd.DataFrame) -> Drawn | None:
    """Accuracy per level, one line per method (supervised dashed), per domain (row) and metric (column)."""
    if d.empty:
        return None
    s = summary(d, ["domain", "metric", "method", "level_index", "level"])
    domains, levels, ms = sorted(s["domain"].unique()), _levels(s), methods(s["method"])
    metrics = [m for m in ("linear", "knn") if m in set(s["metric"])]
    fig, axes = plt.subplots(
        len(domains), len(metrics), figsize=(WIDTH * 0.8, 2.9 * len(domains) + 0.3), squeeze=False, sharey=True
    )
    for i, dom in enumerate(domains):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            for k, m in enumerate(ms):
                part = (
                    s[(s["domain"] == dom) & (s["metric"] == metric) & (s["method"] == m)]
                    .set_index("level")
                    .reindex(levels)
                )
                if part["mean"].isna().all():
                    continue
                x = np.arange(len(levels)) + (k - (len(ms) - 1) / 2) * 0.025  # a small dodge so intervals stay apart
                ax.plot(
                    x,
                    part["mean"],
                    color=colour(m, ms),
                    marker="o",
                    ms=4,
                    lw=1.3,
                    ls="--" if m == SUPERVISED else "-",
                    label=m,
                )
                _errorbars(ax, x, part.fillna({"n": 0}), ecolor=colour(m, ms), capsize=2)
            ax.set_xticks(range(len(levels)), levels)
            ax.set_ylim(0, 1)
            ax.set_title(f"{dom}: {METRIC_NAMES[metric]}", fontsize=10)
            ax.set_xlabel("label level (coarse → fine)")
            ax.set_ylabel("top-1")
    fig.tight_layout()
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    _note(fig, _cap(seeds_note(s["n"])) + ".")
    return drawn(fig)


def fusion(d: pd.DataFrame) -> Drawn | None:
    """Per pair and evaluation domain (finest level): member a, member b and the fused features."""
    d = finest(d) if not d.empty else d
    if d.empty:
        return None
    s = summary(d, ["pair", "eval_domain", "member"])
    s["where"] = s["pair"].str.replace(" + ", "\n+ ", regex=False) + "\non " + s["eval_domain"]
    where = list(dict.fromkeys(s["where"]))
    fig, ax = plt.subplots(figsize=(min(WIDTH, max(5, 1.8 * len(where))), 3.4))
    for k, (member, name, c) in enumerate(
        [("a", "member a", "#9ecae1"), ("b", "member b", "#fdae6b"), ("a+b", "fused", "#31a354")]
    ):
        part = s[s["member"] == member].set_index("where").reindex(where)
        x = np.arange(len(where)) + (k - 1) * 0.27
        ax.bar(x, part["mean"], 0.25, color=c, label=name)
        _errorbars(ax, x, part.fillna({"n": 0}))
    ax.set_xticks(range(len(where)), where, fontsize=8)
    ax.set(xlabel="pair, evaluation domain", ylabel="linear top-1, finest level", ylim=(0, 1))
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    fig.tight_layout()
    _note(fig, _cap(seeds_note(s["n"])) + ".")
    return drawn(fig)


def clustering(d: pd.DataFrame) -> Drawn | None:
    """k-means NMI per checkpoint epoch, per level: the mean over seeds per method (band: interval) for
    the setting most methods share; a method's other settings as thin lines."""
    d = d[d["metric"] == "nmi"] if not d.empty else d
    if d.empty:
        return None
    d = d.assign(setting=_setting(d) + " → " + d["eval_domain"])
    s = summary(d, ["setting", "method", "level_index", "level", "epoch"])
    main = s.groupby("setting")["method"].nunique().idxmax()
    levels, ms = _levels(s), methods(s["method"])
    fig, axes = plt.subplots(1, len(levels), figsize=(WIDTH * 0.86, 3.1), squeeze=False, sharey=True)
    for ax, lv in zip(axes[0], levels):
        for (setting, m), part in s[s["level"] == lv].groupby(["setting", "method"]):
            part = part.sort_values("epoch")
            if setting == main:
                ax.plot(part["epoch"], part["mean"], "o-", ms=3, color=colour(m, ms), label=m)
                _band(ax, part["epoch"], part, colour(m, ms))
            else:
                ax.plot(part["epoch"], part["mean"], "-", lw=0.8, alpha=0.5, color=colour(m, ms))
        ax.set_title(f"{lv} level (K = classes)", fontsize=10)
        ax.set_xlabel("pretraining epoch")
        ax.set_ylabel("k-means NMI")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    order = [labels.index(m) for m in ms if m in labels]
    others = s["setting"].nunique() > 1
    if others:
        handles.append(plt.Line2D([], [], color="#666", lw=0.8, alpha=0.5))
    fig.tight_layout()
    fig.legend(
        [handles[i] for i in order] + handles[len(labels) :],
        [labels[i] for i in order] + (["other settings of a method"] if others else []),
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95),
        frameon=False,
    )
    _note(fig, f"Bold: {main}; {seeds_note(s['n'])}.")
    return drawn(fig)


def loss(curves: pd.DataFrame, flags: dict[str, str] | None = None) -> Drawn | None:
    """Pretraining loss per epoch, one panel per method (each its own y axis: the losses' scales differ
    by orders of magnitude), one line per run in the method's colour; suspect runs dashed and named."""
    if curves.empty:
        return None
    flags = flags or {}
    d = curves.assign(method=curves["run"].str.split("/").str[0])
    ms = methods(d["method"])
    ncol = min(4, len(ms))
    nrow = math.ceil(len(ms) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(WIDTH, 2.4 * nrow + 0.3), squeeze=False)
    for ax, m in zip(axes.flat, ms):
        part = d[d["method"] == m]
        bad = sorted({flags[r] for r in part["run"].unique() if r in flags})
        for run, g in part.groupby("run"):
            g = g.sort_values("epoch")
            ax.plot(g["epoch"], g["loss"], color=colour(m, ms), lw=1.1, alpha=0.8, ls="--" if run in flags else "-")
        ax.set_title(m + (f": {', '.join(bad)} (dashed)" if bad else ""), fontsize=10, color="#b00" if bad else "k")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
    for ax in axes.flat[len(ms) :]:
        ax.set_axis_off()
    fig.tight_layout()
    _note(fig, "One line per run (seeds and settings); each panel has its own y axis.")
    return drawn(fig)
