"""Which runs the report must not show as plain results: those whose pretraining collapsed (the last
metrics.jsonl record says so) and those whose pretrained features score below their own random weights."""

from __future__ import annotations

import pandas as pd

from .. import stats

COLUMNS = ["run", "flag", "reason", "folder"]
# what the warnings box says was checked when no run is flagged
CHECKED = (
    "the last pretraining-metrics record of each run (collapse check), and frozen pretrained vs random "
    "weights of each run (paired over seeds: kNN and linear accuracy at every level; with 1 seed, kNN at the "
    "coarsest level)"
)
SCORES = ("knn", "linear")  # what "below random" is judged on (clustering scores near zero at fine levels are noise)
KEYS = ["method", "domain", "subset", "quality", "eval_domain", "level_index", "level", "metric"]


def folder(run: str) -> str:
    return f"results/runs/{run}"


def collapsed(curves: pd.DataFrame) -> list[dict]:
    """Runs whose last record (highest epoch) has collapsed: true; curves: metrics.jsonl rows with column run."""
    if curves.empty or "collapsed" not in curves:
        return []
    out = []
    for run, g in curves.sort_values("epoch").groupby("run", sort=True):
        last = g.iloc[-1]
        if pd.notna(last.get("collapsed")) and bool(last.get("collapsed")):
            why = last.get("collapse_reason")
            out.append(
                dict(
                    run=run,
                    flag="collapsed",
                    reason=why if isinstance(why, str) and why else f"collapsed at epoch {int(last['epoch'])}",
                )
            )
    return out


def below_random(frozen: pd.DataFrame) -> list[dict]:
    """Runs (of the study's own, evaluated on their pretraining domain) whose pretrained features score
    below their random weights: with >= 2 seeds a paired difference (on seed) with verdict "lower" at
    some level for kNN or linear accuracy flags every seed's run; with 1 seed, pretrained < random for
    kNN at the coarsest level."""
    if frozen.empty:
        return []
    d = frozen[
        frozen["run"].isin(frozen.loc[frozen["weights"] == "random", "run"])
        & (frozen["eval_domain"] == frozen["domain"])
        & frozen["metric"].isin(SCORES)
    ]
    if d.empty:
        return []
    d = d.groupby(KEYS + ["weights", "seed", "run"], as_index=False, dropna=False)["value"].mean()
    out = []
    for _, g in d.groupby(KEYS[:4], dropna=False, sort=True):
        runs = sorted(g["run"].unique())
        if g["seed"].nunique() >= 2:
            diff = stats.compare(g, by=KEYS[4:], column="weights", a="pretrained", b="random")
            low = diff[diff["verdict"] == "lower"]
            if low.empty:
                continue
            where = "; ".join(
                f"{r.metric} at {r.level} level on {r.eval_domain}: {r['mean']:+.3f} "
                f"[{r.low:+.3f}, {r.high:+.3f}] (95% t, n={r.n})"
                for _, r in low.iterrows()
            )
            reason = f"below random weights (pretrained − random, paired over seeds): {where}"
        else:
            k = g[g["metric"] == "knn"]
            k = k[k["level_index"] == k.groupby("eval_domain")["level_index"].transform("min")]
            side = k.pivot_table(index="eval_domain", columns="weights", values="value")
            if not {"pretrained", "random"} <= set(side.columns):
                continue
            bad = side[side["pretrained"] < side["random"]]
            if bad.empty:
                continue
            where = "; ".join(f"kNN {r.pretrained:.3f} vs random {r.random:.3f} on {dom}" for dom, r in bad.iterrows())
            reason = f"below random weights (1 seed, no interval): {where}"
        out += [dict(run=r, flag="below random", reason=reason) for r in runs]
    return out


def suspects(frozen: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per suspect run: run, flag (short: "collapsed", "below random" or both), reason, folder."""
    rows = collapsed(curves) + below_random(frozen)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    d = (
        pd.DataFrame(rows)
        .groupby("run", sort=True)
        .agg(flag=("flag", ", ".join), reason=("reason", "; ".join))
        .reset_index()
    )
    d["folder"] = d["run"].map(folder)
    return d[COLUMNS]


def mark(run: str, flags: dict[str, str]) -> str:
    """A run id as the tables show it, suffixed " ⚠ (flag)" when suspect (figures mark runs their own way)."""
    return f"{run} ⚠ ({flags[run]})" if run in flags else run


def flagged(runs, flags: dict[str, str]) -> str:
    """The flagged runs among `runs`, seeds of one model and flag written once:
    "swav/natural_frac1_clean/seed{0,2}: collapsed; simclr/natural_frac1_clean/seed1: below random" ("" when none)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in sorted(set(runs)):
        if r in flags:
            model, _, seed = r.rpartition("/seed")
            key = (model, flags[r]) if model and seed.isdigit() else (r, flags[r])
            groups.setdefault(key, []).append(seed if model and seed.isdigit() else "")
    out = []
    for (model, flag), seeds in groups.items():
        seeds = sorted(seeds, key=lambda x: int(x) if x else -1)
        name = (
            model
            if seeds == [""]
            else f"{model}/seed{seeds[0]}"
            if len(seeds) == 1
            else f"{model}/seed{{{','.join(seeds)}}}"
        )
        out.append(f"{name}: {flag}")
    return "; ".join(out)


def with_mark(label: str, suspect: str, sign: str = " ⚠") -> str:
    """A row of several runs (seeds, members) as the tables show it: "simclr ⚠ (run: flag)" when any is flagged."""
    return f"{label}{sign} ({suspect})" if suspect else label


def marked(df: pd.DataFrame, flags: dict[str, str], sign: str = " ⚠") -> pd.DataFrame:
    """df with its run column (or index level) marked."""
    if df.empty or not flags:
        return df
    if "run" in df.columns:
        return df.assign(run=df["run"].map(lambda r: mark(r, flags)))
    if "run" in (df.index.names or []):
        return df.rename(index=lambda r: mark(r, flags), level="run")
    return df
